package perfrun_test

import (
	"testing"
	"time"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

func BenchmarkCompare(b *testing.B) {
	ra, rb := benchRun(1, 300*time.Microsecond), benchRun(2, 300*time.Microsecond)
	for b.Loop() {
		perfrun.Compare(ra, rb)
	}
}
