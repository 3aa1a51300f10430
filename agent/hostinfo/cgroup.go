package hostinfo

import (
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/moby/sys/mountinfo"
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
	mounts, err := mountinfo.GetMountsFromReader(r, nil)
	if err != nil {
		return CgroupUnknown, fmt.Errorf("mountinfo: %w", err)
	}
	var v1, v2, v2AtRoot bool
	for _, m := range mounts {
		if !within(m.Mountpoint, root) {
			continue
		}
		switch m.FSType {
		case "cgroup":
			v1 = true
		case "cgroup2":
			v2 = true
			if path.Clean(m.Mountpoint) == path.Clean(root) {
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
