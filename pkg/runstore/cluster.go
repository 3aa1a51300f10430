package runstore

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// Names and keys of the ConfigMaps that hold runs.
const (
	// DefaultNamespace is the agent namespace, where runs are shared.
	DefaultNamespace = "mesh-system"
	// ConfigMapPrefix starts every run ConfigMap's name; the run id follows.
	ConfigMapPrefix = "mesh-run-"
	// LabelRunID holds the run id, so runs are listed by label, not by name.
	LabelRunID = "kubectl-mesh.dev/run-id"
	// AnnotationTarget and AnnotationStart describe the run for someone reading the
	// ConfigMap with kubectl.
	AnnotationTarget = "kubectl-mesh.dev/target"
	AnnotationStart  = "kubectl-mesh.dev/start-time"
	// KeyJSON holds the run as perfrun.Marshal writes it; KeyGzip holds it gzipped, for
	// runs too large for KeyJSON.
	KeyJSON = "run.json"
	KeyGzip = "run.json.gz"
	// MaxConfigMapData is the API server's limit on the summed size of a ConfigMap's values.
	MaxConfigMapData = corev1.MaxSecretSize
	// maxDecoded bounds a gzipped run's decoded size, so a hostile ConfigMap cannot exhaust
	// memory; real runs compress far less than this ratio.
	maxDecoded = 64 << 20
)

// runLabels are on every run ConfigMap; the selector lists exactly those.
var runLabels = map[string]string{
	"app.kubernetes.io/part-of":    "kubectl-mesh",
	"app.kubernetes.io/managed-by": "kubectl-mesh",
}

const runSelector = "app.kubernetes.io/part-of=kubectl-mesh,app.kubernetes.io/managed-by=kubectl-mesh," + LabelRunID

// ClusterStore keeps one ConfigMap per run in a namespace.
type ClusterStore struct {
	client    kubernetes.Interface
	namespace string
	// limit is MaxConfigMapData; tests lower it.
	limit int
}

// Cluster returns the store in namespace (DefaultNamespace when empty).
func Cluster(client kubernetes.Interface, namespace string) *ClusterStore {
	if namespace == "" {
		namespace = DefaultNamespace
	}
	return &ClusterStore{client: client, namespace: namespace, limit: MaxConfigMapData}
}

func (s *ClusterStore) String() string { return "cluster store (namespace " + s.namespace + ")" }

// Namespace is the store's namespace.
func (s *ClusterStore) Namespace() string { return s.namespace }

// ConfigMapName is the name of the ConfigMap holding the run with this id.
func ConfigMapName(id string) string { return ConfigMapPrefix + id }

func (s *ClusterStore) location(id string) string {
	return "configmap " + s.namespace + "/" + ConfigMapName(id)
}

// Save creates the run's ConfigMap, or replaces it when the run was saved before. The run is
// kept as plain JSON when it fits, so `kubectl get configmap -o yaml` shows it; otherwise it
// is gzipped into binaryData.
func (s *ClusterStore) Save(ctx context.Context, r *perfrun.Run) (string, error) {
	if err := checkSavable(r); err != nil {
		return "", err
	}
	cm, err := s.configMap(r)
	if err != nil {
		return "", err
	}
	where := s.location(r.GetId())
	cms := s.client.CoreV1().ConfigMaps(s.namespace)
	_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// An unconditional update: the run with this id is the same run, saved again.
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		return "", fmt.Errorf("saving run to %s: %w", where, err)
	}
	return where, nil
}

func (s *ClusterStore) configMap(r *perfrun.Run) (*corev1.ConfigMap, error) {
	b, err := perfrun.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("encoding run %s: %w", r.GetId(), err)
	}
	cm := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{
			Name:        ConfigMapName(r.GetId()),
			Namespace:   s.namespace,
			Labels:      map[string]string{LabelRunID: r.GetId()},
			Annotations: map[string]string{AnnotationTarget: DescribeTarget(r.GetTarget())},
		},
	}
	for k, v := range runLabels {
		cm.Labels[k] = v
	}
	if r.GetStartTime() != nil {
		cm.Annotations[AnnotationStart] = r.GetStartTime().AsTime().UTC().Format(time.RFC3339)
	}
	if len(b) <= s.limit {
		cm.Data = map[string]string{KeyJSON: string(b)}
		return cm, nil
	}
	var z bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&z, gzip.BestCompression)
	zw.Write(b) // writes to a bytes.Buffer do not fail
	if err := zw.Close(); err != nil {
		return nil, fmt.Errorf("compressing run %s: %w", r.GetId(), err)
	}
	if z.Len() > s.limit {
		return nil, fmt.Errorf("run %s is too large for a ConfigMap: %d bytes of JSON, %d bytes gzipped, and the limit is %d bytes; it is kept in the local store only",
			r.GetId(), len(b), z.Len(), s.limit)
	}
	cm.BinaryData = map[string][]byte{KeyGzip: z.Bytes()}
	return cm, nil
}

// decode reads the run out of a ConfigMap.
func (s *ClusterStore) decode(cm *corev1.ConfigMap) (*perfrun.Run, error) {
	where := "configmap " + cm.Namespace + "/" + cm.Name
	var b []byte
	if js, ok := cm.Data[KeyJSON]; ok {
		b = []byte(js)
	} else if z, ok := cm.BinaryData[KeyGzip]; ok {
		zr, err := gzip.NewReader(bytes.NewReader(z))
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", where, KeyGzip, err)
		}
		b, err = io.ReadAll(io.LimitReader(zr, maxDecoded+1))
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", where, KeyGzip, err)
		}
		if len(b) > maxDecoded {
			return nil, fmt.Errorf("%s: %s decodes to more than %d bytes", where, KeyGzip, maxDecoded)
		}
	} else {
		return nil, fmt.Errorf("%s: holds no run (neither %s nor %s)", where, KeyJSON, KeyGzip)
	}
	r, err := perfrun.Unmarshal(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", where, err)
	}
	if id := cm.Labels[LabelRunID]; r.GetId() != id || cm.Name != ConfigMapName(id) {
		return nil, fmt.Errorf("%s: holds run %s, not the one its name and label say", where, r.GetId())
	}
	return r, nil
}

func (s *ClusterStore) list(ctx context.Context) ([]corev1.ConfigMap, error) {
	l, err := s.client.CoreV1().ConfigMaps(s.namespace).List(ctx, metav1.ListOptions{LabelSelector: runSelector})
	if err != nil {
		return nil, fmt.Errorf("listing runs in %s: %w", s, err)
	}
	return l.Items, nil
}

// List reads every run ConfigMap in the namespace.
func (s *ClusterStore) List(ctx context.Context) ([]Entry, []error) {
	cms, err := s.list(ctx)
	if err != nil {
		return nil, []error{err}
	}
	var es []Entry
	var errs []error
	for i := range cms {
		r, err := s.decode(&cms[i])
		if err != nil {
			errs = append(errs, err)
			continue
		}
		es = append(es, NewEntry(r, s.location(r.GetId())))
	}
	sortEntries(es)
	return es, errs
}

// Match lists the ids, from the run-id label, that start with prefix.
func (s *ClusterStore) Match(ctx context.Context, prefix string) ([]string, error) {
	cms, err := s.list(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, cm := range cms {
		if id := cm.Labels[LabelRunID]; strings.HasPrefix(id, prefix) {
			out = append(out, id)
		}
	}
	return out, nil
}

// Get reads the run with this id.
func (s *ClusterStore) Get(ctx context.Context, id string) (*perfrun.Run, string, error) {
	if !isID(id) {
		return nil, "", fmt.Errorf("%w: %q is not a run id", ErrNotFound, id)
	}
	cm, err := s.client.CoreV1().ConfigMaps(s.namespace).Get(ctx, ConfigMapName(id), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, "", fmt.Errorf("%w: no run %s in %s", ErrNotFound, id, s)
	}
	if err != nil {
		return nil, "", fmt.Errorf("reading run %s from %s: %w", id, s, err)
	}
	r, err := s.decode(cm)
	if err != nil {
		return nil, "", err
	}
	return r, s.location(id), nil
}

var _ Store = (*ClusterStore)(nil)
