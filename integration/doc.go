// Package integration holds end-to-end tests of the treetx command. They
// build the real binary once (TestMain) and drive it with os/exec on trees in
// temporary directories, comparing trees byte for byte with package
// treeimage.
//
// Some tests need root (mount, chown, running as user nobody) or cvs; without
// them they are skipped, except under CI=true, where they fail.
package integration
