package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
)

// NBD over TLS: the server certificate and key (tls_cert, tls_key) and, for
// mutual TLS, the CA that client certificates must be signed by
// (tls_client_ca). They are read at start (an unreadable or mismatched pair
// stops the start), again on Daemon.ReloadTLS (cairnd calls it on SIGHUP)
// and when one of the files changes (checked every tlsPoll). A reload that
// fails keeps what was loaded and logs why. Connections already in TLS keep
// their session; each new handshake takes the latest files.

// tlsPoll is how often the files are checked for changes.
const tlsPoll = 2 * time.Second

// tlsFiles is the loaded TLS material; the config handed to every new TLS
// handshake is built from it.
type tlsFiles struct {
	certPath, keyPath, caPath string

	mu      sync.Mutex
	current *tls.Config // guarded by mu
	stamp   string      // guarded by mu: the files' sizes and times when loaded
}

// newTLSFiles loads the files; nil without tls_cert.
func newTLSFiles(cfg Config) (*tlsFiles, error) {
	if cfg.TLSCert == "" {
		return nil, nil
	}
	t := &tlsFiles{certPath: cfg.TLSCert, keyPath: cfg.TLSKey, caPath: cfg.TLSClientCA}
	if err := t.load(); err != nil {
		return nil, err
	}
	return t, nil
}

// serverConfig is the config the NBD server uses: each handshake gets the
// one loaded last.
func (t *tlsFiles) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			t.mu.Lock()
			defer t.mu.Unlock()
			return t.current, nil
		},
	}
}

// load reads the files and, if they make a valid config, makes it current.
func (t *tlsFiles) load() error {
	stamp := t.fileStamp()
	cert, err := tls.LoadX509KeyPair(t.certPath, t.keyPath)
	if err != nil {
		return fmt.Errorf("tls_cert %s and tls_key %s: %w", t.certPath, t.keyPath, err)
	}
	if cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
		return fmt.Errorf("tls_cert %s expired on %s: clients would refuse it", t.certPath, cert.Leaf.NotAfter.Format(time.DateOnly))
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}}
	if t.caPath != "" {
		pem, err := os.ReadFile(t.caPath)
		if err != nil {
			return fmt.Errorf("tls_client_ca: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("tls_client_ca %s holds no PEM certificate", t.caPath)
		}
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	}
	t.mu.Lock()
	t.current, t.stamp = c, stamp
	t.mu.Unlock()
	return nil
}

// fileStamp describes the files' sizes and modification times, to notice
// a change.
func (t *tlsFiles) fileStamp() string {
	s := ""
	for _, p := range []string{t.certPath, t.keyPath, t.caPath} {
		if fi, err := os.Stat(p); err == nil {
			s += fmt.Sprintf("%s:%d:%d;", p, fi.Size(), fi.ModTime().UnixNano())
		}
	}
	return s
}

// changed reports whether the files differ from what was loaded.
func (t *tlsFiles) changed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.fileStamp() != t.stamp
}

// watch reloads the files when they change, until ctx ends.
func (t *tlsFiles) watch(ctx context.Context, d *Daemon) {
	tick := time.NewTicker(tlsPoll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if t.changed() {
				d.reloadTLS("files changed")
			}
		}
	}
}

// ReloadTLS reads the TLS certificate, key and client CA again (cairnd
// calls it on SIGHUP). On error the previous ones stay in use.
func (d *Daemon) ReloadTLS() error {
	if d.tls == nil {
		d.log.Info("reload requested: no TLS files to reread (tls_cert is not set)")
		return errors.New("no TLS configured (tls_cert)")
	}
	return d.reloadTLS("reload requested")
}

func (d *Daemon) reloadTLS(why string) error {
	if err := d.tls.load(); err != nil {
		d.log.Error("TLS files not reloaded; the previous certificate stays in use", "reason", why, "err", err)
		return err
	}
	d.log.Info("TLS files reloaded", "reason", why, "cert", d.tls.certPath)
	return nil
}
