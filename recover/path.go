package recover

import (
	"os"
	"path/filepath"
)

// evalSymlinks resolves dir to an absolute path with symlinks resolved. If
// dir itself is missing, its parent is resolved and dir's base name kept.
func evalSymlinks(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		return real, nil
	}
	parent, err := filepath.EvalSymlinks(filepath.Dir(abs))
	if err != nil {
		return "", err
	}
	if fi, err := os.Stat(parent); err != nil || !fi.IsDir() {
		return "", os.ErrNotExist
	}
	return filepath.Join(parent, filepath.Base(abs)), nil
}
