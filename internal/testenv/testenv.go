// Package testenv serves the tests of this module; no shipped code imports
// it. It says how thorough a run is, seeds its samples, and checks the
// tools and privileges tests need, the same way in every package.
//
// Thoroughness. Some tests enumerate: a crash after every step of a
// transaction, every subset of the steps a power cut may lose, the recovery
// script against recover.Recover over every crash state, rounds of kill
// torture. A default run (go test ./...) checks a sample of each: the
// points the protocol turns on (its own steps rather than the links of a
// shadow, the crash points beside each sync, one of each distinct crash
// state), plus a share drawn at random from the rest with a seed the test
// logs. TREETX_EXHAUSTIVE=1 checks every point; TREETX_TEST_SEED=N draws
// the same random share again.
//
// Tools. A test that needs a tool (cvs, mkfs.xfs...) or root calls Require
// with its Group: it is skipped where that is missing, and fails under
// CI=true, where everything must be installed. Each package's TestMain
// calls Announce with the groups its tests use, which prints one line for
// each group that will be skipped, where go test shows it.
package testenv

import (
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

const (
	// ExhaustiveEnv set to anything but "" or "0" makes Exhaustive true.
	ExhaustiveEnv = "TREETX_EXHAUSTIVE"
	// SeedEnv sets the seed of the random samples.
	SeedEnv = "TREETX_TEST_SEED"
)

// Exhaustive reports whether this run checks every point of every
// enumeration (TREETX_EXHAUSTIVE=1) instead of a sample.
func Exhaustive() bool {
	v := os.Getenv(ExhaustiveEnv)
	return v != "" && v != "0"
}

// CI reports whether this is a CI run (CI=true), where a missing tool fails
// the tests that need it instead of skipping them.
func CI() bool { return os.Getenv("CI") == "true" }

// clockSeed is the seed of a run that names none: drawn once per process.
var clockSeed = sync.OnceValue(func() uint64 { return uint64(time.Now().UnixNano()) })

// Seed returns the seed of t's random samples and logs it (a failing test
// prints its log): the first of envs that is set (a test's own variable),
// else $TREETX_TEST_SEED, else one drawn from the clock once per process.
func Seed(t testing.TB, envs ...string) uint64 {
	t.Helper()
	for _, name := range append(slices.Clone(envs), SeedEnv) {
		s := os.Getenv(name)
		if s == "" {
			continue
		}
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: want an unsigned number", name, s)
		}
		t.Logf("seed %d (from %s)", v, name)
		return v
	}
	v := clockSeed()
	t.Logf("seed %d (%s=%d draws the same samples)", v, SeedEnv, v)
	return v
}

// Sample returns the points of 0..n-1 that a run checks, in increasing
// order: every one in an exhaustive run; else each point must reports, and
// extra more drawn with rng from the others (all of them if fewer). must
// may be nil.
func Sample(n int, must func(i int) bool, extra int, rng *rand.Rand) []int {
	var out, rest []int
	for i := range n {
		if Exhaustive() || must != nil && must(i) {
			out = append(out, i)
		} else {
			rest = append(rest, i)
		}
	}
	rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	out = append(out, rest[:min(extra, len(rest))]...)
	slices.Sort(out)
	return out
}

// Counted says how many of total points were checked, for a test's summary
// line: "N of TOTAL checked" and, when that is a sample, how to check all.
func Counted(checked, total int) string {
	if checked >= total {
		return fmt.Sprintf("%d of %d checked", checked, total)
	}
	return fmt.Sprintf("%d of %d checked (a sample: %s=1 checks all)", checked, total, ExhaustiveEnv)
}
