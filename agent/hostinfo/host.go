// Package hostinfo describes the node the agent runs on as far as measuring goes: kernel,
// BTF, the agent's capabilities, the cgroup layout and whether it sees host processes.
package hostinfo

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Paths are where Collect looks; tests and containers that mount host paths elsewhere
// change them.
type Paths struct {
	// Proc is procfs, normally /proc.
	Proc string
	// BTF is the kernel's BTF, normally /sys/kernel/btf/vmlinux.
	BTF string
	// CgroupRoot is where the cgroup hierarchies are mounted, normally /sys/fs/cgroup.
	CgroupRoot string
}

// DefaultPaths are the standard locations.
var DefaultPaths = Paths{Proc: "/proc", BTF: "/sys/kernel/btf/vmlinux", CgroupRoot: "/sys/fs/cgroup"}

// Host is what Collect found.
type Host struct {
	KernelRelease string
	BTF           bool
	Capabilities  []string
	CgroupLayout  CgroupLayout
	HostPID       bool
}

// Collect gathers the host facts. A fact it cannot read is left at its zero value and the
// reason returned, so one unreadable file does not hide the rest.
func Collect(p Paths) (Host, error) {
	var h Host
	var errs []error
	var err error
	if h.KernelRelease, err = KernelRelease(); err != nil {
		errs = append(errs, err)
	}
	h.BTF = Readable(p.BTF)
	if f, err := os.Open(filepath.Join(p.Proc, "self", "status")); err != nil {
		errs = append(errs, err)
	} else {
		mask, err := ParseCapEff(f)
		f.Close()
		if err != nil {
			errs = append(errs, err)
		}
		h.Capabilities = CapabilityNames(mask)
	}
	if f, err := os.Open(filepath.Join(p.Proc, "self", "mountinfo")); err != nil {
		errs = append(errs, err)
	} else {
		h.CgroupLayout, err = CgroupLayoutFromMountinfo(f, p.CgroupRoot)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("cgroup layout: %w", err))
		}
	}
	h.HostPID = HostPID(p.Proc, os.Getpid())
	return h, errors.Join(errs...)
}

// KernelRelease is uname -r.
func KernelRelease() (string, error) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "", fmt.Errorf("uname: %w", err)
	}
	return unix.ByteSliceToString(u.Release[:]), nil
}

// Readable reports whether the file exists and its first byte can be read, which is what
// loading CO-RE programs against it needs (existence alone says nothing under a
// restrictive mount or LSM).
func Readable(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = f.Read(make([]byte, 1))
	return err == nil
}

// HostPID reports whether procfs shows the host's PID namespace. Comparing
// /proc/self/ns/pid with /proc/1/ns/pid cannot tell: pid 1 is always in our own namespace.
// kthreadd, the parent of all kernel threads, is pid 2 in the initial namespace only and
// visible in no other, so seeing it (and not being pid 1 ourselves) is the test.
func HostPID(procRoot string, selfPID int) bool {
	if selfPID == 1 {
		return false
	}
	comm, err := os.ReadFile(filepath.Join(procRoot, "2", "comm"))
	if err != nil {
		return false
	}
	return string(bytes.TrimSpace(comm)) == "kthreadd"
}

// HasCapability reports whether the agent holds the named capability, e.g. "CAP_BPF".
func (h Host) HasCapability(name string) bool {
	for _, c := range h.Capabilities {
		if strings.EqualFold(c, name) {
			return true
		}
	}
	return false
}
