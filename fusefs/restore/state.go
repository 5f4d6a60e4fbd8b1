package restore

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

func stateDir(dir string) string {
	if dir == "" {
		return DefaultStateDir
	}
	return dir
}

// statePath names the state file of the mount on dir (an absolute path).
func statePath(state, dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return filepath.Join(state, hex.EncodeToString(sum[:12])+".json")
}

func readState(state, dir string) (Info, error) {
	b, err := os.ReadFile(statePath(state, dir))
	if errors.Is(err, fs.ErrNotExist) {
		return Info{}, fmt.Errorf("%w recorded at %s (state in %s)", ErrNotMounted, dir, state)
	}
	if err != nil {
		return Info{}, fmt.Errorf("read restore mount state: %w", err)
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return Info{}, fmt.Errorf("restore mount state %s is corrupt: %w", statePath(state, dir), err)
	}
	return info, nil
}

// writeState records info atomically (a reader sees the old file or the
// new one).
func writeState(state string, info Info) error {
	if err := os.MkdirAll(state, 0o700); err != nil {
		return fmt.Errorf("create restore mount state directory: %w", err)
	}
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	path := statePath(state, info.Dir)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("record restore mount: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("record restore mount: %w", err)
	}
	return nil
}

func removeState(state, dir string) error {
	if err := os.Remove(statePath(state, dir)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("forget restore mount: %w", err)
	}
	return nil
}

// List returns the restore mounts recorded in stateDirectory (empty means
// DefaultStateDir).
func List(stateDirectory string) ([]Info, error) {
	state := stateDir(stateDirectory)
	paths, err := filepath.Glob(filepath.Join(state, "*.json"))
	if err != nil {
		return nil, err
	}
	var out []Info
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // removed meanwhile
		}
		var info Info
		if err := json.Unmarshal(b, &info); err != nil {
			return nil, fmt.Errorf("restore mount state %s is corrupt: %w", p, err)
		}
		out = append(out, info)
	}
	return out, nil
}
