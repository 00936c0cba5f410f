package snapshot

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// makeCorpus builds a CVS-like tree of dirs directories with files files of
// 4 KB each, under root.
func makeCorpus(tb testing.TB, root string, dirs, files int) {
	tb.Helper()
	data := make([]byte, 4096)
	for d := 0; d < dirs; d++ {
		dir := filepath.Join(root, fmt.Sprintf("m%02d", d%10), fmt.Sprintf("d%04d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			tb.Fatal(err)
		}
		for f := 0; f < files/dirs; f++ {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d.c,v", f)), data, 0o444); err != nil {
				tb.Fatal(err)
			}
		}
	}
}

func buildShadow(tb testing.TB, src, parent, name string) int {
	tb.Helper()
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil {
		tb.Fatal(err)
	}
	if _, err := Build(src, pfd, name, Options{Manifest: NewManifestWriter(io.Discard)}); err != nil {
		tb.Fatal(err)
	}
	return pfd
}

// BenchmarkBuild builds the shadow of a 10,000-file tree (not durable).
func BenchmarkBuild(b *testing.B) {
	src := filepath.Join(b.TempDir(), "src")
	makeCorpus(b, src, 1000, 10000)
	parent := b.TempDir()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		name := fmt.Sprintf("shadow%d", i)
		pfd := buildShadow(b, src, parent, name)
		b.StopTimer()
		if err := Remove(parent, name, nil); err != nil {
			b.Fatal(err)
		}
		unix.Close(pfd)
		b.StartTimer()
	}
}

// BenchmarkDurable compares the two ways to make a fresh shadow durable:
// one syncfs, or an fsync of every directory of it.
func BenchmarkDurable(b *testing.B) {
	src := filepath.Join(b.TempDir(), "src")
	makeCorpus(b, src, 1000, 10000)
	parent := b.TempDir()
	for _, mode := range []string{"syncfs", "fsync-each-dir"} {
		b.Run(mode, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				unix.Sync()
				name := fmt.Sprintf("shadow-%s-%d", mode, i)
				pfd := buildShadow(b, src, parent, name)
				b.StartTimer()
				if mode == "syncfs" {
					if err := unix.Syncfs(pfd); err != nil {
						b.Fatal(err)
					}
				} else {
					err := filepath.WalkDir(filepath.Join(parent, name), func(p string, d os.DirEntry, err error) error {
						if err != nil || !d.IsDir() {
							return err
						}
						fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
						if err != nil {
							return err
						}
						defer unix.Close(fd)
						return unix.Fsync(fd)
					})
					if err != nil {
						b.Fatal(err)
					}
					if err := unix.Fsync(pfd); err != nil {
						b.Fatal(err)
					}
				}
				b.StopTimer()
				unix.Close(pfd)
				if err := Remove(parent, name, nil); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
		})
	}
}
