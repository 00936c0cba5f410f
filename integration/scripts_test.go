package integration

import (
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
)

// TestShellScriptsLint runs shellcheck over the shipped shell scripts, as
// POSIX sh: they run on machines without the binary, at early boot, and
// under whatever sh the system has.
func TestShellScriptsLint(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Shellcheck)
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := filepath.Glob(filepath.Join(root, "scripts", "*.sh"))
	if err != nil {
		t.Fatal(err)
	}
	scripts = append(scripts, filepath.Join(root, "scripts", "cvs-atomic"), filepath.Join(root, "scripts", "cvs-server-atomic"))
	if len(scripts) < 6 {
		t.Fatalf("found only %v", scripts)
	}
	out, err := exec.Command("shellcheck", append([]string{"-s", "sh", "-S", "warning"}, scripts...)...).CombinedOutput()
	if err != nil {
		t.Errorf("shellcheck: %v\n%s", err, out)
	}
}
