package simcluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// ResolveCacheDir returns the cache directory Start would use for dir ("" means the default).
func ResolveCacheDir(dir string) (string, error) {
	if dir == "" {
		root, err := repoRoot()
		if err != nil {
			return "", err
		}
		dir = defaultCacheDir(root)
	}
	return filepath.Abs(dir)
}

// StopDetached stops every cluster in cacheDir that a `simcluster start` supervisor owns, by
// signalling the supervisor and waiting for it to tear down; if it does not, or if an owner died
// without tearing down, it removes the cluster itself from the recorded state. Clusters owned by
// a running test are left alone. It reports what it did to log.
func StopDetached(ctx context.Context, cacheDir string, log io.Writer) error {
	cacheDir, err := ResolveCacheDir(cacheDir)
	if err != nil {
		return err
	}
	var errs []error
	found := false
	prefix := filepath.Join(cacheDir, "clusters") + string(filepath.Separator)
	for slot := 0; slot < maxSlots; slot++ {
		// The lock names the slot's current (or last) cluster; after a reboot only this cache's
		// directory for the slot is left to look at.
		dirs := []string{slotDir(cacheDir, slot)}
		if d := slotOwnerDir(slot); d != "" && d != dirs[0] && strings.HasPrefix(d, prefix) {
			dirs = append(dirs, d)
		}
		for _, dir := range dirs {
			st, err := readState(dir)
			if err != nil {
				if !os.IsNotExist(err) {
					errs = append(errs, err)
				}
				continue
			}
			found = true
			if err := stopSlot(ctx, slot, st, log); err != nil {
				errs = append(errs, fmt.Errorf("slot %d: %w", slot, err))
			}
		}
	}
	if !found {
		fmt.Fprintf(log, "simcluster: no cluster in %s\n", filepath.Join(cacheDir, "clusters"))
	}
	return errors.Join(errs...)
}

func stopSlot(ctx context.Context, slot int, st *state, log io.Writer) error {
	logf := func(format string, args ...any) { fmt.Fprintf(log, "simcluster: "+format+"\n", args...) }
	lock := slotLock(slot)
	held, ok, err := tryFlock(lock)
	if err != nil {
		return err
	}
	var release func()
	if ok {
		release = func() { held.Close() }
	} else if owner := slotOwnerDir(slot); owner != st.Dir {
		// The slot is held by another cluster; this directory is a leftover.
		logf("slot %d: removing leftover %s (the slot now belongs to %s)", slot, st.Dir, owner)
		return errors.Join(unmountUnder(st.Dir), os.RemoveAll(st.Dir))
	} else {
		if procStartTime(st.OwnerPID) != st.OwnerStart {
			logf("slot %d: a new cluster is taking over %s; leaving it alone", slot, st.Dir)
			return nil
		}
		if !st.Daemon {
			logf("slot %d belongs to a running test (pid %d); leaving it alone", slot, st.OwnerPID)
			return nil
		}
		logf("slot %d: stopping supervisor pid %d", slot, st.OwnerPID)
		_ = syscall.Kill(st.OwnerPID, syscall.SIGTERM)
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		release, err = flock(wctx, lock)
		cancel()
		if err != nil {
			// The supervisor is stuck; its lock dies with it.
			logf("slot %d: supervisor did not finish (%v); killing it and tearing down from the recorded state", slot, err)
			_ = syscall.Kill(st.OwnerPID, syscall.SIGKILL)
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			release, err = flock(wctx, lock)
			cancel()
			if err != nil {
				return err
			}
		}
	}
	defer release()
	if !ok {
		// The supervisor releases the lock when its teardown is done; let it exit, too.
		for i := 0; i < 200 && syscall.Kill(st.OwnerPID, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	// Re-read: a supervisor that finished its teardown removed the directory.
	st, err = readState(st.Dir)
	if os.IsNotExist(err) {
		logf("slot %d: stopped", slot)
		return nil
	}
	if err != nil {
		return err
	}
	logf("slot %d: tearing down from %s", slot, filepath.Join(st.Dir, "state.json"))
	return teardown(st, nil, logf)
}
