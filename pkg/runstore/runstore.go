// Package runstore keeps performance runs: one JSON file per run under the user's data
// directory, and optionally one ConfigMap per run in the agent namespace so that a team sees
// each other's results. Runs are found again by id, by a unique id prefix, or by file path.
package runstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// MinPrefix is the shortest id prefix accepted; shorter ones match too much by chance.
const MinPrefix = 4

// ErrNotFound is wrapped by every error about a run that no store holds.
var ErrNotFound = errors.New("run not found")

// Store is one place runs are kept.
type Store interface {
	// Save stores the run, replacing a stored run with the same id, and says where it went.
	Save(ctx context.Context, r *perfrun.Run) (where string, err error)
	// List returns the stored runs, newest first. A run that cannot be read is reported in
	// the errors (one per run, naming it) and does not hide the others.
	List(ctx context.Context) ([]Entry, []error)
	// Match returns the ids of the stored runs whose id starts with prefix (lower case).
	Match(ctx context.Context, prefix string) ([]string, error)
	// Get loads the run with exactly this id; an error wrapping ErrNotFound when there is none.
	Get(ctx context.Context, id string) (r *perfrun.Run, where string, err error)
	// String names the store for messages.
	String() string
}

// Entry describes a stored run for listings.
type Entry struct {
	ID    string
	Start time.Time
	// Target is the target as the user would type it, e.g. "deploy/web -n demo port 8080".
	Target string
	// Mesh is the detected mesh and version, empty when none was found.
	Mesh string
	// Nodes is how many nodes took part, FailedNodes how many of them returned no result.
	Nodes, FailedNodes int
	Interrupted        bool
	// Location is where the run is kept: a file path or "configmap NAMESPACE/NAME".
	Location string
}

// NewEntry describes a run kept at location.
func NewEntry(r *perfrun.Run, location string) Entry {
	e := Entry{
		ID:          r.GetId(),
		Target:      DescribeTarget(r.GetTarget()),
		Nodes:       len(r.GetNodes()),
		Interrupted: r.GetInterrupted(),
		Location:    location,
	}
	if r.GetStartTime() != nil {
		e.Start = r.GetStartTime().AsTime()
	}
	if m := r.GetMesh(); m.GetName() != "" {
		e.Mesh = strings.TrimSpace(m.GetName() + " " + m.GetVersion())
	}
	for _, n := range r.GetNodes() {
		if n.GetResult() == nil {
			e.FailedNodes++
		}
	}
	return e
}

// DescribeTarget renders a target the way it is given on the command line.
func DescribeTarget(t *perfrun.Target) string {
	if t == nil {
		return ""
	}
	var s string
	switch {
	case t.GetKind() == "selector" || (t.GetName() == "" && t.GetSelector() != ""):
		s = "-l " + t.GetSelector()
	case t.GetKind() != "":
		s = t.GetKind() + "/" + t.GetName()
	default:
		s = t.GetName()
	}
	if t.GetNamespace() != "" {
		s += " -n " + t.GetNamespace()
	}
	if t.GetPort() != 0 {
		s += fmt.Sprintf(" port %d", t.GetPort())
	}
	return strings.TrimSpace(s)
}

// sortEntries orders entries newest first; the id breaks ties so listings are stable.
func sortEntries(es []Entry) {
	slices.SortStableFunc(es, func(a, b Entry) int {
		if c := b.Start.Compare(a.Start); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
}

// checkSavable refuses runs that could not be read back (Unmarshal is strict) or whose id
// would not make a safe file or object name.
func checkSavable(r *perfrun.Run) error {
	if r == nil {
		return errors.New("no run to save")
	}
	if r.GetFormat() != perfrun.Format {
		return fmt.Errorf("run format %q is not %q", r.GetFormat(), perfrun.Format)
	}
	if !isID(r.GetId()) {
		return fmt.Errorf("run id %q is not a UUID", r.GetId())
	}
	return nil
}

// isID says whether s is a run id in its canonical form (a lower-case hyphenated UUID),
// the only form used in file and ConfigMap names.
func isID(s string) bool {
	u, err := uuid.Parse(s)
	return err == nil && u.String() == s
}

// normalizePrefix checks an id or id prefix typed by the user and lower-cases it.
func normalizePrefix(ref string) (string, error) {
	p := strings.ToLower(strings.TrimSpace(ref))
	if p == "" {
		return "", errors.New("no run id given")
	}
	for _, c := range p {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c == '-') {
			return "", fmt.Errorf("%q is neither an existing file nor a run id (ids are hexadecimal UUIDs; see kubectl mesh perf list)", ref)
		}
	}
	if len(p) < MinPrefix {
		return "", fmt.Errorf("run id prefix %q is too short: give at least %d characters", ref, MinPrefix)
	}
	return p, nil
}

// AmbiguousError is returned for an id prefix that matches more than one run.
type AmbiguousError struct {
	Prefix string
	// Candidates are the matching ids, each with the store holding it.
	Candidates []Candidate
}

// Candidate is one run an ambiguous prefix matched.
type Candidate struct {
	ID    string
	Store string
}

func (e *AmbiguousError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "run id prefix %q is ambiguous; it matches %d runs:", e.Prefix, len(e.Candidates))
	for _, c := range e.Candidates {
		fmt.Fprintf(&b, " %s (%s);", c.ID, c.Store)
	}
	b.WriteString(" give more characters")
	return b.String()
}

// Open finds a run by reference: a path to a run file, a full run id, or an id prefix of at
// least MinPrefix characters, searching the stores in order (put the local store first).
//
// A reference naming an existing file is always read as that file, so a file in the current
// directory that happens to look like an id wins over the stores. A reference that looks like
// a path (it has a path separator or ends in ".json") but does not exist is reported as a
// missing file rather than as an unknown id.
//
// A full id is taken from the first store holding it, without asking the later stores (if
// none has it readable, the errors of the stores that failed are returned). A
// prefix is matched in every store, so that a run in the cluster cannot silently shadow, or be
// shadowed by, a local one; the same run kept in two stores counts once. When a store cannot
// be asked (an unreachable cluster), the runs found in the others still answer; its error is
// returned only when nothing was found.
func Open(ctx context.Context, ref string, stores ...Store) (r *perfrun.Run, where string, err error) {
	if fi, statErr := os.Stat(ref); statErr == nil || !errors.Is(statErr, os.ErrNotExist) || looksLikePath(ref) {
		if statErr != nil {
			return nil, "", statErr
		}
		if fi.IsDir() {
			return nil, "", fmt.Errorf("%s is a directory, not a run file", ref)
		}
		r, err := ReadFile(ref)
		return r, ref, err
	}
	prefix, err := normalizePrefix(ref)
	if err != nil {
		return nil, "", err
	}
	var storeErrs []error
	if isID(prefix) {
		for _, s := range stores {
			r, where, err := s.Get(ctx, prefix)
			if err == nil {
				return r, where, nil
			}
			if !errors.Is(err, ErrNotFound) {
				storeErrs = append(storeErrs, err)
			}
		}
		// A store that holds the run damaged, or could not be asked, says more than "not
		// found"; its error names the file or the store.
		if len(storeErrs) > 0 {
			return nil, "", errors.Join(storeErrs...)
		}
		return nil, "", notFound(ref, stores, nil)
	}
	type hit struct {
		id    string
		store Store
	}
	var hits []hit
	var cands []Candidate
	for _, s := range stores {
		ids, err := s.Match(ctx, prefix)
		if err != nil {
			storeErrs = append(storeErrs, err)
			continue
		}
		for _, id := range ids {
			cands = append(cands, Candidate{ID: id, Store: s.String()})
			if !slices.ContainsFunc(hits, func(h hit) bool { return h.id == id }) {
				hits = append(hits, hit{id, s})
			}
		}
	}
	switch len(hits) {
	case 0:
		return nil, "", notFound(ref, stores, storeErrs)
	case 1:
		return hits[0].store.Get(ctx, hits[0].id)
	default:
		slices.SortFunc(cands, func(a, b Candidate) int { return strings.Compare(a.ID, b.ID) })
		return nil, "", &AmbiguousError{Prefix: ref, Candidates: cands}
	}
}

func notFound(ref string, stores []Store, storeErrs []error) error {
	names := make([]string, len(stores))
	for i, s := range stores {
		names[i] = s.String()
	}
	err := fmt.Errorf("%w: no run with id %q in %s (see kubectl mesh perf list)", ErrNotFound, ref, strings.Join(names, " or "))
	if len(stores) == 0 {
		err = fmt.Errorf("%w: no run with id %q: no store to search", ErrNotFound, ref)
	}
	return errors.Join(append([]error{err}, storeErrs...)...)
}

func looksLikePath(ref string) bool {
	return strings.ContainsRune(ref, '/') || strings.ContainsRune(ref, os.PathSeparator) || strings.HasSuffix(strings.ToLower(ref), ".json")
}

// ReadFile reads a run file. An unreadable file gives the OS error (which names the path);
// content that is not a run gives perfrun.Unmarshal's error prefixed with the path.
func ReadFile(path string) (*perfrun.Run, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	r, err := perfrun.Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return r, nil
}

// List lists the runs of every store, newest first. A run kept in two stores is listed once
// per store, each with its location.
func List(ctx context.Context, stores ...Store) ([]Entry, []error) {
	var all []Entry
	var errs []error
	for _, s := range stores {
		es, e := s.List(ctx)
		all = append(all, es...)
		errs = append(errs, e...)
	}
	sortEntries(all)
	return all, errs
}
