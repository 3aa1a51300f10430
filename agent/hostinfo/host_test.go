//go:build linux

package hostinfo

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCgroupLayoutFromMountinfo(t *testing.T) {
	for _, tc := range []struct {
		fixture, root string
		want          CgroupLayout
	}{
		// The cilium cgroup2 under /run is outside the root and must not make this hybrid.
		{"mountinfo-v1", "/sys/fs/cgroup", CgroupV1},
		{"mountinfo-v2", "/sys/fs/cgroup", CgroupV2},
		{"mountinfo-v2", "/sys/fs/cgroup/", CgroupV2},
		{"mountinfo-hybrid", "/sys/fs/cgroup", CgroupHybrid},
		{"mountinfo-v2-in-container", "/sys/fs/cgroup", CgroupV2},
		// The host's hierarchy mounted into the container at a path with an escaped space.
		{"mountinfo-v2-in-container", "/host/sys fs/cgroup", CgroupV2},
	} {
		f, err := os.Open(filepath.Join("testdata", tc.fixture))
		if err != nil {
			t.Fatal(err)
		}
		got, err := CgroupLayoutFromMountinfo(f, tc.root)
		f.Close()
		if err != nil || got != tc.want {
			t.Errorf("%s at %q: got %v, %v; want %v", tc.fixture, tc.root, got, err, tc.want)
		}
	}
}

func TestCgroupLayoutFromMountinfoErrors(t *testing.T) {
	f, err := os.Open(filepath.Join("testdata", "mountinfo-v2"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if l, err := CgroupLayoutFromMountinfo(f, "/elsewhere"); err == nil || l != CgroupUnknown {
		t.Errorf("no cgroup under root: got %v, %v; want an error", l, err)
	}
	if _, err := CgroupLayoutFromMountinfo(strings.NewReader("1 2 0:1 / /x rw shared:1\n"), "/"); err == nil {
		t.Error("line without separator parsed")
	}
}

// TestCgroupLayoutOfThisHost checks the mountinfo reading against the independent statfs
// method on the machine running the test.
func TestCgroupLayoutOfThisHost(t *testing.T) {
	h, err := Collect(DefaultPaths)
	if err != nil {
		t.Fatalf("Collect: %v (partial: %+v)", err, h)
	}
	byStatfs, err := CgroupLayoutFromStatfs(DefaultPaths.CgroupRoot)
	if err != nil {
		t.Fatal(err)
	}
	if h.CgroupLayout != byStatfs {
		t.Errorf("mountinfo says %v, statfs says %v", h.CgroupLayout, byStatfs)
	}
	t.Logf("host: %+v", h)
}

func TestParseCapEffAndNames(t *testing.T) {
	// This machine's status: everything but CAP_SYS_RESOURCE (24), up to CAP_CHECKPOINT_RESTORE.
	status := "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n"
	mask, err := ParseCapEff(strings.NewReader(status))
	if err != nil || mask != 0x1fffeffffff {
		t.Fatalf("ParseCapEff = %#x, %v", mask, err)
	}
	names := CapabilityNames(mask)
	if len(names) != 40 || slices.Contains(names, "CAP_SYS_RESOURCE") {
		t.Errorf("got %d names %v; want 40 without CAP_SYS_RESOURCE", len(names), names)
	}
	if _, err := ParseCapEff(strings.NewReader("Name:\tx\n")); err == nil {
		t.Error("status without CapEff parsed")
	}
	if _, err := ParseCapEff(strings.NewReader("CapEff:\tzz\n")); err == nil {
		t.Error("bad CapEff parsed")
	}
	if got := CapabilityNames(0); len(got) != 0 {
		t.Errorf("no bits: %v", got)
	}
	if got := CapabilityNames(1<<unix.CAP_BPF | 1<<unix.CAP_PERFMON | 1<<45); !slices.Equal(got, []string{"CAP_PERFMON", "CAP_BPF", "CAP_45"}) {
		t.Errorf("got %v", got)
	}
}

// TestCapabilityTableMatchesKernelNumbers pins the hand-written table to x/sys's constants.
func TestCapabilityTableMatchesKernelNumbers(t *testing.T) {
	want := map[string]int{
		"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE,
		"CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH, "CAP_FOWNER": unix.CAP_FOWNER,
		"CAP_FSETID": unix.CAP_FSETID, "CAP_KILL": unix.CAP_KILL, "CAP_SETGID": unix.CAP_SETGID,
		"CAP_SETUID": unix.CAP_SETUID, "CAP_SETPCAP": unix.CAP_SETPCAP,
		"CAP_LINUX_IMMUTABLE": unix.CAP_LINUX_IMMUTABLE, "CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE,
		"CAP_NET_BROADCAST": unix.CAP_NET_BROADCAST, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
		"CAP_NET_RAW": unix.CAP_NET_RAW, "CAP_IPC_LOCK": unix.CAP_IPC_LOCK, "CAP_IPC_OWNER": unix.CAP_IPC_OWNER,
		"CAP_SYS_MODULE": unix.CAP_SYS_MODULE, "CAP_SYS_RAWIO": unix.CAP_SYS_RAWIO,
		"CAP_SYS_CHROOT": unix.CAP_SYS_CHROOT, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE,
		"CAP_SYS_PACCT": unix.CAP_SYS_PACCT, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN, "CAP_SYS_BOOT": unix.CAP_SYS_BOOT,
		"CAP_SYS_NICE": unix.CAP_SYS_NICE, "CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE,
		"CAP_SYS_TIME": unix.CAP_SYS_TIME, "CAP_SYS_TTY_CONFIG": unix.CAP_SYS_TTY_CONFIG,
		"CAP_MKNOD": unix.CAP_MKNOD, "CAP_LEASE": unix.CAP_LEASE, "CAP_AUDIT_WRITE": unix.CAP_AUDIT_WRITE,
		"CAP_AUDIT_CONTROL": unix.CAP_AUDIT_CONTROL, "CAP_SETFCAP": unix.CAP_SETFCAP,
		"CAP_MAC_OVERRIDE": unix.CAP_MAC_OVERRIDE, "CAP_MAC_ADMIN": unix.CAP_MAC_ADMIN,
		"CAP_SYSLOG": unix.CAP_SYSLOG, "CAP_WAKE_ALARM": unix.CAP_WAKE_ALARM,
		"CAP_BLOCK_SUSPEND": unix.CAP_BLOCK_SUSPEND, "CAP_AUDIT_READ": unix.CAP_AUDIT_READ,
		"CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
		"CAP_CHECKPOINT_RESTORE": unix.CAP_CHECKPOINT_RESTORE,
	}
	if len(capNames) != 41 || len(want) != 41 {
		t.Fatalf("table has %d names, constants %d; want 41", len(capNames), len(want))
	}
	for i, n := range capNames {
		if want[n] != i {
			t.Errorf("capNames[%d] = %s, which is %d", i, n, want[n])
		}
	}
}

func TestHostPID(t *testing.T) {
	dir := t.TempDir()
	if HostPID(dir, 100) {
		t.Error("no /proc/2: reported host PID namespace")
	}
	if err := os.MkdirAll(filepath.Join(dir, "2"), 0o755); err != nil {
		t.Fatal(err)
	}
	// In a container with its own PID namespace, pid 2 is some process of the pod.
	if err := os.WriteFile(filepath.Join(dir, "2", "comm"), []byte("sleep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if HostPID(dir, 100) {
		t.Error("pid 2 is sleep: reported host PID namespace")
	}
	if err := os.WriteFile(filepath.Join(dir, "2", "comm"), []byte("kthreadd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !HostPID(dir, 100) {
		t.Error("pid 2 is kthreadd: not reported as host PID namespace")
	}
	if HostPID(dir, 1) {
		t.Error("we are pid 1: reported host PID namespace")
	}
}

func TestReadable(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "vmlinux")
	if Readable(p) {
		t.Error("missing file readable")
	}
	if err := os.WriteFile(p, []byte{0x9f}, 0o644); err != nil {
		t.Fatal(err)
	}
	if !Readable(p) {
		t.Error("file not readable")
	}
	if Readable(dir) {
		t.Error("directory counted as a readable BTF file")
	}
}

func TestHasCapability(t *testing.T) {
	h := Host{Capabilities: []string{"CAP_PERFMON", "CAP_BPF"}}
	if !h.HasCapability("CAP_BPF") || !h.HasCapability("cap_perfmon") || h.HasCapability("CAP_SYS_ADMIN") {
		t.Errorf("HasCapability wrong for %v", h.Capabilities)
	}
}
