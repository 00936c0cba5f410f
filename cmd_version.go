package main

import (
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

type versionOptions struct {
	json bool
}

func newVersionCommand() *cobra.Command {
	o := &versionOptions{}
	c := &cobra.Command{
		Use:                   "version [--json]",
		DisableFlagsInUseLine: true,
		Short:                 "Print treetx's version, as the build recorded it",
		Long: `Print treetx's version, as the Go toolchain recorded it in the binary: the
module's version (a release tag, a pseudo-version made from the commit, or
(devel)), the VCS revision and its time, whether the work tree had changes
not committed, and the Go version and platform. treetx --version and -V
print the same.

A binary built with -buildvcs=false, outside a git checkout, or in a git
worktree (go build stamps only a checkout whose .git is a directory) records
no revision.`,
		Example: "  treetx --version\n  treetx version --json",
		Args:    usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runVersion(o, cmd.OutOrStdout())
		},
	}
	c.Flags().BoolVar(&o.json, "json", false, "print a JSON object")
	return c
}

func runVersion(o *versionOptions, stdout io.Writer) error {
	v := readVersion()
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(v)
	}
	_, err := io.WriteString(stdout, v.String())
	return err
}

// buildVersion is what the binary knows of its own build.
type buildVersion struct {
	// Version is the main module's: a tag (v1.2.0), a pseudo-version
	// (v0.0.0-20251202102500-20ea3d5a1b2c+dirty), or (devel).
	Version  string `json:"version"`
	Revision string `json:"revision"` // "" when not recorded
	Time     string `json:"time"`     // the revision's commit time, RFC 3339
	Modified bool   `json:"modified"` // the work tree had uncommitted changes
	Go       string `json:"go"`
	Platform string `json:"platform"` // GOOS/GOARCH
}

func readVersion() buildVersion {
	v := buildVersion{Version: "(unknown)", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return v
	}
	if info.Main.Version != "" {
		v.Version = info.Main.Version
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	return v
}

// String is the text treetx version prints:
//
//	treetx v0.0.0-20251202102500-20ea3d5a1b2c+dirty
//	revision 20ea3d5a1b2c4f5e... (2025-12-02T10:25:00Z), modified
//	go1.26.8 linux/amd64
func (v buildVersion) String() string {
	rev := "revision unknown (not recorded in the build)"
	if v.Revision != "" {
		rev = "revision " + v.Revision
		if v.Time != "" {
			rev += " (" + v.Time + ")"
		}
		if v.Modified {
			rev += ", modified"
		}
	}
	return fmt.Sprintf("treetx %s\n%s\n%s %s\n", v.Version, rev, v.Go, v.Platform)
}
