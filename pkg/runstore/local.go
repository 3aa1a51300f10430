package runstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// appDir is the application's directory under the data directory.
const appDir = "kubectl-mesh"

// DefaultDir is where runs are kept on this machine: $XDG_DATA_HOME/kubectl-mesh/runs.
//
// XDG semantics hold on every OS, because kubectl plugins are command-line tools and their
// users (and CI jobs) expect one variable to move the data everywhere: XDG_DATA_HOME wins when
// it is set to an absolute path (the XDG spec says relative ones are ignored). Without it,
// Linux and macOS use ~/.local/share, as most command-line tools do on macOS too (the
// Library/Application Support folder is for GUI applications and hard to reach from a shell);
// Windows uses %LocalAppData%, since runs are per machine and need not roam.
func DefaultDir() (string, error) {
	if d := os.Getenv("XDG_DATA_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, appDir, "runs"), nil
	}
	if runtime.GOOS == "windows" {
		if d := os.Getenv("LocalAppData"); d != "" {
			return filepath.Join(d, appDir, "runs"), nil
		}
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("finding the directory for stored runs: %w (set XDG_DATA_HOME)", err)
	}
	return filepath.Join(home, ".local", "share", appDir, "runs"), nil
}

// LocalStore keeps one file per run, <id>.json, in one directory.
type LocalStore struct {
	dir string
}

// Local returns the store in dir; the directory is created on the first Save.
func Local(dir string) *LocalStore { return &LocalStore{dir: dir} }

// Dir is the store's directory.
func (s *LocalStore) Dir() string { return s.dir }

func (s *LocalStore) String() string { return "local store " + s.dir }

// Path is where the run with this id is kept.
func (s *LocalStore) Path(id string) string { return filepath.Join(s.dir, id+".json") }

// Save writes the run atomically: a reader sees the old file or the new one, never a part,
// and a crash leaves at worst a hidden temporary file. Runs hold the cluster's node and pod
// names, so the directory is private (0700) and the file owner-only (0600).
func (s *LocalStore) Save(_ context.Context, r *perfrun.Run) (string, error) {
	if err := checkSavable(r); err != nil {
		return "", err
	}
	b, err := perfrun.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("encoding run %s: %w", r.GetId(), err)
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return "", fmt.Errorf("creating the run store: %w", err)
	}
	path := s.Path(r.GetId())
	// The temporary file lives in the same directory so the rename stays on one filesystem.
	f, err := os.CreateTemp(s.dir, "."+r.GetId()+".*.tmp")
	if err != nil {
		return "", fmt.Errorf("saving run: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // a no-op once renamed
	if err := f.Chmod(0o600); err != nil && runtime.GOOS != "windows" {
		f.Close()
		return "", fmt.Errorf("saving run: %w", err)
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return "", fmt.Errorf("saving run: %w", err)
	}
	// Without the sync a crash right after the rename can leave an empty file under the
	// final name on filesystems that reorder metadata and data writes.
	if err := f.Sync(); err != nil {
		f.Close()
		return "", fmt.Errorf("saving run: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("saving run: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("saving run: %w", err)
	}
	if d, err := os.Open(s.dir); err == nil {
		_ = d.Sync() // best effort: makes the rename durable; not every OS supports it
		d.Close()
	}
	return path, nil
}

// runFiles lists the ids of the run files in the directory, and the other files that are
// neither runs nor our temporary files.
func (s *LocalStore) runFiles() (ids, others []string, err error) {
	des, err := os.ReadDir(s.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("reading the run store: %w", err)
	}
	for _, de := range des {
		name := de.Name()
		if de.IsDir() || strings.HasPrefix(name, ".") {
			continue
		}
		if id, ok := strings.CutSuffix(name, ".json"); ok && isID(id) {
			ids = append(ids, id)
			continue
		}
		others = append(others, name)
	}
	return ids, others, nil
}

// List reads every run in the directory. Files that do not belong there are reported too, so
// that a misnamed copy of a run does not vanish from view.
func (s *LocalStore) List(_ context.Context) ([]Entry, []error) {
	ids, others, err := s.runFiles()
	if err != nil {
		return nil, []error{err}
	}
	var es []Entry
	var errs []error
	for _, id := range ids {
		r, path, err := s.read(id)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		es = append(es, NewEntry(r, path))
	}
	for _, name := range others {
		errs = append(errs, fmt.Errorf("%s: not a run file (run files are named <id>.json)", filepath.Join(s.dir, name)))
	}
	sortEntries(es)
	return es, errs
}

// Match lists the ids of the run files whose id starts with prefix.
func (s *LocalStore) Match(_ context.Context, prefix string) ([]string, error) {
	ids, _, err := s.runFiles()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, id := range ids {
		if strings.HasPrefix(id, prefix) {
			out = append(out, id)
		}
	}
	return out, nil
}

// Get reads the run with this id.
func (s *LocalStore) Get(_ context.Context, id string) (*perfrun.Run, string, error) {
	if !isID(id) {
		return nil, "", fmt.Errorf("%w: %q is not a run id", ErrNotFound, id)
	}
	if _, err := os.Stat(s.Path(id)); errors.Is(err, os.ErrNotExist) {
		return nil, "", fmt.Errorf("%w: no run %s in %s", ErrNotFound, id, s)
	}
	return s.read(id)
}

func (s *LocalStore) read(id string) (*perfrun.Run, string, error) {
	path := s.Path(id)
	r, err := ReadFile(path)
	if err != nil {
		return nil, path, err
	}
	// The file name is what ids are looked up by; a file whose content says otherwise (a
	// copy saved under another name) would be found under the wrong id.
	if r.GetId() != id {
		return nil, path, fmt.Errorf("%s: holds run %s, not the one its name says", path, r.GetId())
	}
	return r, path, nil
}

var _ Store = (*LocalStore)(nil)
