package hostinfo

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CgroupLayoutFromStatfs tells the layout from the filesystem types under root, for when
// mountinfo is not readable. It checks only the conventional places (root itself and
// systemd's root/unified), so it knows less than CgroupLayoutFromMountinfo.
func CgroupLayoutFromStatfs(root string) (CgroupLayout, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		return CgroupUnknown, fmt.Errorf("statfs %s: %w", root, err)
	}
	switch st.Type {
	case unix.CGROUP2_SUPER_MAGIC:
		return CgroupV2, nil
	case unix.CGROUP_SUPER_MAGIC:
		// A single v1 hierarchy mounted at root itself.
		return CgroupV1, nil
	case unix.TMPFS_MAGIC:
	default:
		return CgroupUnknown, fmt.Errorf("%s is not a cgroup filesystem or a tmpfs of cgroup mounts (type %#x)", root, st.Type)
	}
	var unified unix.Statfs_t
	if err := unix.Statfs(filepath.Join(root, "unified"), &unified); err == nil && unified.Type == unix.CGROUP2_SUPER_MAGIC {
		return CgroupHybrid, nil
	}
	return CgroupV1, nil
}
