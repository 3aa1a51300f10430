// Package version carries the release of the plugin and the agent, set at link time.
package version

// Version is overwritten by the build with -ldflags "-X <this package>.Version=vX.Y.Z".
var Version = "v0.1.0-dev"
