package meshpods

import (
	"context"
	"fmt"
	"os"
	"sync"

	"github.com/kubectl-mesh/kubectl-mesh/test/simcluster"
)

// Image tags of the meshed workloads, imported into the real node's containerd by Deploy.
const (
	AppImage        = "localhost/kubectl-mesh/nginx:dev"
	SidecarImage    = "localhost/kubectl-mesh/istio-proxy:dev"
	DelayProxyImage = "localhost/kubectl-mesh/delayproxy:dev"

	// DelayProxyPackage is the known-delay proxy's package, built as a static binary.
	DelayProxyPackage = "./test/delayproxy"
)

// Ports and identities of the Istio-shaped pods.
const (
	AppPort = 8080
	// InboundCapturePort is where interception sends inbound traffic (Envoy's virtualInbound).
	InboundCapturePort = 15006
	// OutboundCapturePort is Envoy's virtualOutbound; the sidecars here do not listen on it.
	OutboundCapturePort = 15001
	// ReadinessPort serves the sidecar's /healthz/ready, as pilot-agent does.
	ReadinessPort = 15021
	// ProxyUID is the sidecar's user (and group): Istio's istio-proxy user.
	ProxyUID = 1337

	// SidecarHeader is added to every response that passed through the nginx sidecar.
	SidecarHeader = "X-Mesh-Sidecar"
	// AppBody is what the app serves on every path but AppStatusPath.
	AppBody = "hello from app\n"
	// AppStatusPath serves the app's nginx stub_status: its own count of requests.
	AppStatusPath = "/nginx_status"
)

const nginxBin = "/usr/sbin/nginx"

// nginxDirectives common to both nginx roles. Every path nginx writes is under /tmp, which
// the pods mount as an emptyDir (the sidecar's root filesystem is read-only, as Istio's is).
const nginxCommon = `daemon off;
worker_processes 1;
pid /tmp/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
`

const nginxHTTPCommon = `  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  client_body_temp_path /tmp/client_body;
  proxy_temp_path /tmp/proxy;
  fastcgi_temp_path /tmp/fastcgi;
  uwsgi_temp_path /tmp/uwsgi;
  scgi_temp_path /tmp/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
`

// appConfig: the master runs as root (like most apps in meshed pods), its worker as nobody.
var appConfig = nginxCommon + `user nobody nogroup;
http {
` + nginxHTTPCommon + `  access_log off;
  server {
    listen ` + fmt.Sprint(AppPort) + ` reuseport;
    location / {
      default_type text/plain;
      return 200 "` + "hello from app\\n" + `";
    }
    # The app's own request count, for tests that check what reached it.
    location = ` + AppStatusPath + ` {
      stub_status;
    }
  }
}
`

// sidecarConfig: inbound listener on the capture port, proxying to the app over loopback with
// pooled upstream connections (as Envoy does), and the readiness endpoint. It runs as
// ProxyUID, so no user directive. Access log lines carry nginx's own request and upstream
// times.
var sidecarConfig = nginxCommon + `http {
` + nginxHTTPCommon + `  log_format mesh '$remote_addr "$request" $status $body_bytes_sent rt=$request_time urt=$upstream_response_time';
  access_log /dev/stdout mesh buffer=32k flush=1s;
  upstream inbound_app {
    server 127.0.0.1:` + fmt.Sprint(AppPort) + `;
    keepalive 64;
  }
  server {
    listen ` + fmt.Sprint(InboundCapturePort) + ` reuseport;
    location / {
      proxy_pass http://inbound_app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      add_header ` + SidecarHeader + ` istio-proxy always;
    }
  }
  server {
    listen ` + fmt.Sprint(ReadinessPort) + `;
    access_log off;
    location = /healthz/ready { return 200 "ok\n"; }
  }
}
`

// Users and groups of both nginx images: root for the app's master, nobody for its worker,
// istio-proxy for the sidecar. nsswitch.conf makes glibc read only these files.
var (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		fmt.Sprintf("istio-proxy:x:%d:%d:istio-proxy:/tmp:/sbin/nologin\n", ProxyUID, ProxyUID)
	group    = fmt.Sprintf("root:x:0:\nnogroup:x:65534:\nistio-proxy:x:%d:\n", ProxyUID)
	nsswitch = "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"
)

// nginxBase holds the host's nginx, its libraries and the files it reads, read once.
var nginxBase struct {
	once  sync.Once
	files []simcluster.ImageFile
	err   error
}

func nginxFiles(ctx context.Context) ([]simcluster.ImageFile, error) {
	nginxBase.once.Do(func() {
		if _, err := os.Stat(nginxBin); err != nil {
			nginxBase.err = fmt.Errorf("meshpods: %s not found (Debian: apt-get install -y nginx): %w", nginxBin, err)
			return
		}
		files, err := simcluster.HostBinaryWithLibs(ctx, nginxBin)
		if err != nil {
			nginxBase.err = err
			return
		}
		mime, err := simcluster.HostFile("/etc/nginx/mime.types", 0o644)
		if err != nil {
			nginxBase.err = err
			return
		}
		files = append(files, mime,
			simcluster.ImageFile{Path: "etc/passwd", Data: []byte(passwd)},
			simcluster.ImageFile{Path: "etc/group", Data: []byte(group)},
			simcluster.ImageFile{Path: "etc/nsswitch.conf", Data: []byte(nsswitch)},
			simcluster.ImageFile{Path: "tmp", Dir: true, Mode: 0o1777},
		)
		nginxBase.files = files
	})
	return nginxBase.files, nginxBase.err
}

func nginxImage(ctx context.Context, ref, config, user string) (simcluster.ImageSpec, error) {
	base, err := nginxFiles(ctx)
	if err != nil {
		return simcluster.ImageSpec{}, err
	}
	files := append(append([]simcluster.ImageFile(nil), base...),
		simcluster.ImageFile{Path: "etc/nginx/nginx.conf", Data: []byte(config)})
	return simcluster.ImageSpec{
		Ref:        ref,
		Files:      files,
		Entrypoint: []string{nginxBin, "-c", "/etc/nginx/nginx.conf"},
		Env:        []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
		User:       user,
	}, nil
}

// AppImageSpec is the app image: Debian's nginx serving AppBody on AppPort.
func AppImageSpec(ctx context.Context) (simcluster.ImageSpec, error) {
	return nginxImage(ctx, AppImage, appConfig, "")
}

// SidecarImageSpec is the sidecar image: Debian's nginx as a reverse proxy from
// InboundCapturePort to 127.0.0.1:AppPort, as user ProxyUID.
func SidecarImageSpec(ctx context.Context) (simcluster.ImageSpec, error) {
	return nginxImage(ctx, SidecarImage, sidecarConfig, fmt.Sprintf("%d:%d", ProxyUID, ProxyUID))
}

// StaticBinaryImageSpec is an image holding one static binary at /<name>, its entrypoint,
// run as ProxyUID (the known-delay proxy goes in the sidecar's place).
func StaticBinaryImageSpec(ref, name string, bin []byte) simcluster.ImageSpec {
	return simcluster.ImageSpec{
		Ref: ref,
		Files: []simcluster.ImageFile{
			{Path: name, Data: bin, Mode: 0o755},
			{Path: "tmp", Dir: true, Mode: 0o1777},
			{Path: "etc/passwd", Data: []byte(passwd)},
			{Path: "etc/group", Data: []byte(group)},
		},
		Entrypoint: []string{"/" + name},
		Env:        []string{"PATH=/"},
		User:       fmt.Sprintf("%d:%d", ProxyUID, ProxyUID),
	}
}

// ensureImages imports the app image and the image of the chosen proxy into the node.
func ensureImages(ctx context.Context, c *simcluster.Cluster, p Proxy) error {
	app, err := AppImageSpec(ctx)
	if err != nil {
		return err
	}
	specs := []simcluster.ImageSpec{app}
	switch p.Kind {
	case ProxyNginx:
		s, err := SidecarImageSpec(ctx)
		if err != nil {
			return err
		}
		specs = append(specs, s)
	case ProxyDelay:
		bin, err := c.GoBinary(ctx, DelayProxyPackage)
		if err != nil {
			return fmt.Errorf("meshpods: build the known-delay proxy: %w", err)
		}
		b, err := os.ReadFile(bin)
		if err != nil {
			return err
		}
		specs = append(specs, StaticBinaryImageSpec(DelayProxyImage, "delayproxy", b))
	default:
		return fmt.Errorf("meshpods: unknown proxy kind %d", p.Kind)
	}
	for _, s := range specs {
		if err := c.EnsureImage(ctx, s); err != nil {
			return err
		}
	}
	return nil
}
