package lock

import (
	"testing"
)

// FuzzParseHolder feeds arbitrary bytes to the holder-record parser: it
// must never panic, and a blank record is no holder. Its seed corpus is in
// testdata/fuzz/FuzzParseHolder (plain go test runs it).
func FuzzParseHolder(f *testing.F) {
	f.Add([]byte(`{"pid":4242,"host":"cvs1","user":"alice","command":["cvs","commit"],"since":"2026-11-22T01:02:03Z"}` + "\n"))
	f.Add([]byte("  \n"))
	f.Add([]byte(`{"pid":-1,"since":"x"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := parseHolder(data)
		if err == nil && h == nil {
			for _, c := range data {
				if c != ' ' && c != '\n' && c != '\t' && c != '\r' && c != '\v' && c != '\f' && c != 0x85 && c != 0xA0 {
					// bytes.TrimSpace also trims Unicode spaces; only
					// insist on the ASCII case.
					return
				}
			}
		}
		if h != nil && h.Stale {
			t.Fatalf("a record set Stale: %+v", h)
		}
	})
}
