package hostinfo

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
)

// CgroupLayout is how the node's cgroup hierarchies are mounted, which decides where the
// agent reads container CPU and memory and whether a v2 cgroup id identifies a container.
type CgroupLayout int

const (
	CgroupUnknown CgroupLayout = iota
	// CgroupV1 is one mount per v1 controller.
	CgroupV1
	// CgroupV2 is the unified hierarchy mounted at the root.
	CgroupV2
	// CgroupHybrid is v1 controllers with a controller-less v2 hierarchy beside them
	// (systemd's /sys/fs/cgroup/unified); v2 cgroup ids there do not identify containers.
	CgroupHybrid
)

func (l CgroupLayout) String() string {
	switch l {
	case CgroupV1:
		return "v1"
	case CgroupV2:
		return "v2"
	case CgroupHybrid:
		return "hybrid"
	}
	return "unknown"
}

// mount is the part of a mountinfo line the layout depends on.
type mount struct {
	point  string
	fstype string
}

// parseMountinfo reads proc_pid_mountinfo(5) lines:
// "id parent major:minor root mountpoint options [optional...] - fstype source superoptions".
func parseMountinfo(r io.Reader) ([]mount, error) {
	var mounts []mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		sep := -1
		// The optional fields vary in number; the separator comes after the six fixed ones.
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			return nil, fmt.Errorf("mountinfo line %d: no filesystem type after the separator", n)
		}
		mounts = append(mounts, mount{point: unescapeOctal(fields[4]), fstype: fields[sep+1]})
	}
	return mounts, sc.Err()
}

// unescapeOctal undoes the kernel's \ooo escaping of space, tab, newline and backslash.
func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// within reports whether p is root or below it.
func within(p, root string) bool {
	p, root = path.Clean(p), path.Clean(root)
	return p == root || root == "/" || strings.HasPrefix(p, root+"/")
}

// CgroupLayoutFromMountinfo tells the layout from a mountinfo listing, looking only at
// cgroup mounts at or below root (normally /sys/fs/cgroup, or where the host's is mounted
// into the agent's container). Mounts elsewhere, such as a cgroup2 a CNI mounts for its
// own programs, do not change how the node runs its containers.
func CgroupLayoutFromMountinfo(r io.Reader, root string) (CgroupLayout, error) {
	mounts, err := parseMountinfo(r)
	if err != nil {
		return CgroupUnknown, err
	}
	var v1, v2, v2AtRoot bool
	for _, m := range mounts {
		if !within(m.point, root) {
			continue
		}
		switch m.fstype {
		case "cgroup":
			v1 = true
		case "cgroup2":
			v2 = true
			if path.Clean(m.point) == path.Clean(root) {
				v2AtRoot = true
			}
		}
	}
	switch {
	case v2AtRoot:
		return CgroupV2, nil
	case v1 && v2:
		return CgroupHybrid, nil
	case v1:
		return CgroupV1, nil
	case v2:
		// A lone cgroup2 below root with no v1 controllers: still the unified hierarchy.
		return CgroupV2, nil
	}
	return CgroupUnknown, fmt.Errorf("no cgroup filesystem mounted at or below %s", root)
}
