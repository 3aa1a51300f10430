package meshdetect

import "strings"

// variantSuffixes are build flavours that projects append to a release tag
// (docker.io/istio/pilot:1.24.0-distroless); they are not part of the version.
var variantSuffixes = []string{"distroless", "debug", "slim", "alpine", "ubi", "ubi8", "ubi9", "fips", "amd64", "arm64"}

// ImageVersion is the release an image reference names: its tag without a digest and
// without a build-flavour suffix. It is "" for untagged, digest-only and "latest" images,
// which say nothing about the version.
func ImageVersion(image string) string {
	ref, _, _ := strings.Cut(strings.TrimSpace(image), "@")
	slash := strings.LastIndex(ref, "/")
	colon := strings.LastIndex(ref, ":")
	// A colon before the last slash belongs to a registry port (localhost:5000/istio/pilot).
	if colon <= slash {
		return ""
	}
	tag := ref[colon+1:]
	for trimmed := true; trimmed; {
		trimmed = false
		for _, s := range variantSuffixes {
			if t, ok := strings.CutSuffix(tag, "-"+s); ok && t != "" {
				tag, trimmed = t, true
			}
		}
	}
	if tag == "latest" {
		return ""
	}
	return tag
}

// imageRepository is the reference without tag and digest, lower-cased.
func imageRepository(image string) string {
	ref, _, _ := strings.Cut(strings.TrimSpace(image), "@")
	if colon := strings.LastIndex(ref, ":"); colon > strings.LastIndex(ref, "/") {
		ref = ref[:colon]
	}
	return strings.ToLower(ref)
}

// repositoryIs reports whether the image's repository is one of names, compared as whole
// trailing path elements so that mirrors (gcr.io/istio-release/pilot, my.registry/istio/pilot)
// still match "pilot" or "istio/pilot".
func repositoryIs(image string, names ...string) bool {
	repo := imageRepository(image)
	for _, n := range names {
		if repo == n || strings.HasSuffix(repo, "/"+n) {
			return true
		}
	}
	return false
}
