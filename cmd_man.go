package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

func newManCommand() *cobra.Command {
	return &cobra.Command{
		Use:                   "man DIR",
		DisableFlagsInUseLine: true,
		Short:                 "Write treetx's man pages (section 1) into DIR",
		Long: `Write a man page for treetx and one for each of its commands (treetx.1,
treetx-run.1, ...) into DIR, made from their --help. DIR is created if
missing. The pages are dated SOURCE_DATE_EPOCH when it is set (for
reproducible packages), else today.`,
		Example:           "  treetx man /usr/local/share/man/man1 && mandb -q\n  treetx man /tmp/man && man /tmp/man/treetx-run.1",
		Hidden:            true,
		Args:              usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: completeDirs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runMan(cmd.Root(), args[0])
		},
	}
}

func runMan(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	root.DisableAutoGenTag = true
	header := &doc.GenManHeader{
		Title:   "TREETX",
		Section: "1",
		Source:  "treetx " + readVersion().Version,
		Manual:  "treetx manual",
	}
	if err := doc.GenManTree(root, header, dir); err != nil {
		return fmt.Errorf("man: %w", err)
	}
	return nil
}
