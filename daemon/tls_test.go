package daemon_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/daemon"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/internal/testcerts"
)

// NBD over TLS against real clients (qemu-img, qemu-io, nbdinfo) and, for
// the probe of a plain client, qemu-nbd as a reference server. The
// certificates are made in the test (internal/testcerts).

// tlsSetup is the certificates of one test.
type tlsSetup struct {
	dir       string
	ca, other *testcerts.CA
	server    testcerts.Pair
}

func newTLSSetup(t *testing.T) *tlsSetup {
	s := &tlsSetup{dir: t.TempDir(), ca: testcerts.NewCA(t, "cairn test CA"), other: testcerts.NewCA(t, "another CA")}
	s.server = s.ca.Issue(t, "localhost", testcerts.Options{})
	return s
}

// serverFiles writes the server's files and sets them in cfg.
func (s *tlsSetup) serverFiles(t *testing.T, cfg *daemonConfig, pair testcerts.Pair, clientCA *testcerts.CA) {
	testcerts.Write(t, filepath.Join(s.dir, "srv"), map[string][]byte{"cert.pem": pair.CertPEM, "key.pem": pair.KeyPEM})
	cfg.TLSCert, cfg.TLSKey = filepath.Join(s.dir, "srv", "cert.pem"), filepath.Join(s.dir, "srv", "key.pem")
	if clientCA != nil {
		testcerts.Write(t, filepath.Join(s.dir, "srv"), map[string][]byte{"client-ca.pem": clientCA.PEM})
		cfg.TLSClientCA = filepath.Join(s.dir, "srv", "client-ca.pem")
	}
}

// client writes a client credentials directory: trusting trust, with own
// certificate (nil: none).
func (s *tlsSetup) client(t *testing.T, name string, trust *testcerts.CA, own *testcerts.Pair) string {
	return testcerts.ClientDir(t, filepath.Join(s.dir, name), trust, own)
}

func tlsObject(dir string) string {
	return "tls-creds-x509,id=tls0,endpoint=client,dir=" + dir
}

// qemuIO runs qemu-io on export at addr, over TLS with creds unless "".
func qemuIOTLS(addr, export, creds string, cmds ...string) (string, error) {
	host, port, _ := net.SplitHostPort(addr)
	opts := fmt.Sprintf("driver=nbd,server.type=inet,server.host=%s,server.port=%s,export=%s", host, port, export)
	args := []string{}
	if creds != "" {
		args = append(args, "--object", tlsObject(creds))
		opts += ",tls-creds=tls0"
	}
	args = append(args, "--image-opts", opts)
	for _, c := range cmds {
		if c == "-r" {
			args = append(args, c)
			continue
		}
		args = append(args, "-c", c)
	}
	out, err := exec.Command("qemu-io", args...).CombinedOutput()
	return string(out), err
}

// nbdinfo runs nbdinfo on an nbds:// URI with the client directory.
func nbdinfoTLS(addr, export, creds string) (string, error) {
	uri := "nbds://" + addr + "/" + export
	if creds != "" {
		uri += "?tls-certificates=" + creds
	}
	out, err := exec.Command("nbdinfo", uri).CombinedOutput()
	return string(out), err
}

// optionReply connects to addr without TLS, sends NBD_OPT_GO (or, with
// export "", NBD_OPT_LIST) and returns the type of the first reply.
func optionReply(t *testing.T, addr, export string) uint32 {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	hello := make([]byte, 18)
	if _, err := io.ReadFull(c, hello); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	msg := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	msg = binary.BigEndian.AppendUint64(msg, 0x49484156454F5054)
	if export == "" {
		msg = binary.BigEndian.AppendUint32(msg, 3) // LIST
		msg = binary.BigEndian.AppendUint32(msg, 0)
	} else {
		msg = binary.BigEndian.AppendUint32(msg, 7) // GO
		msg = binary.BigEndian.AppendUint32(msg, uint32(4+len(export)+2))
		msg = binary.BigEndian.AppendUint32(msg, uint32(len(export)))
		msg = append(msg, export...)
		msg = binary.BigEndian.AppendUint16(msg, 0)
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 20)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("option reply: %v", err)
	}
	return binary.BigEndian.Uint32(reply[12:])
}

const repErrTLSReqd = 1<<31 + 5

type daemonConfig = daemon.Config

// Selective TLS on a loopback listener: plain clients reach plain
// exports; an export in tls_required answers a plain client
// NBD_REP_ERR_TLS_REQD and serves only over TLS; a client that trusts
// another CA refuses the server; the certificate is replaced (reload)
// without dropping a connected client.
func TestNBDTLSSelective(t *testing.T) {
	for _, tool := range []string{"qemu-io", "qemu-img", "nbdinfo"} {
		need(t, tool)
	}
	s := newTLSSetup(t)
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	s.serverFiles(t, &cfg, s.server, nil)
	cfg.TLSRequired = []string{"secure"}
	var err error
	if cfg.NBDTCPListener, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	addr := cfg.NBDTCPListener.Addr().String()
	in := daemontest.Start(t, &cfg)
	createDisk(t, in, "plain", "1M")
	createDisk(t, in, "secure", "1M")
	good := s.client(t, "good", s.ca, nil)

	if out, err := qemuIOTLS(addr, "plain", "", "write -P 0x11 0 64k", "read -P 0x11 0 64k"); err != nil {
		t.Fatalf("plain client, plain export: %v\n%s", err, out)
	}
	if got := optionReply(t, addr, "secure"); got != repErrTLSReqd {
		t.Fatalf("plain NBD_OPT_GO on a TLS-required export: reply type %#x, want NBD_REP_ERR_TLS_REQD", got)
	}
	if out, err := qemuIOTLS(addr, "secure", "", "read 0 4k"); err == nil {
		t.Fatalf("plain qemu-io read a TLS-required export:\n%s", out)
	}
	if out, err := qemuIOTLS(addr, "secure", good, "write -P 0x22 0 64k", "read -P 0x22 0 64k"); err != nil || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("qemu-io over TLS: %v\n%s", err, out)
	}
	if out, err := nbdinfoTLS(addr, "secure", good); err != nil || !strings.Contains(out, "1048576") {
		t.Fatalf("nbdinfo nbds://: %v\n%s", err, out)
	}
	if out, err := exec.Command("qemu-img", "info", "--object", tlsObject(good), "--image-opts",
		"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port="+portOf(addr)+",export=secure,tls-creds=tls0").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img info over TLS: %v\n%s", err, out)
	}
	wrongCA := s.client(t, "wrong-ca", s.other, nil)
	if out, err := qemuIOTLS(addr, "secure", wrongCA, "read 0 4k"); err == nil {
		t.Fatalf("a client trusting another CA accepted the server:\n%s", out)
	}
	if out, err := nbdinfoTLS(addr, "secure", wrongCA); err == nil {
		t.Fatalf("nbdinfo trusting another CA accepted the server:\n%s", out)
	}

	// Reload: a connected TLS client keeps its session; new ones see the
	// new certificate (signed by the other CA).
	held := exec.Command("qemu-io", "--object", tlsObject(good), "--image-opts",
		"driver=nbd,server.type=inet,server.host=127.0.0.1,server.port="+portOf(addr)+",export=secure,tls-creds=tls0",
		"-c", "read -P 0x22 0 4k", "-c", "sleep 3000", "-c", "read -P 0x22 0 4k")
	heldOut := &strings.Builder{}
	held.Stdout, held.Stderr = heldOut, heldOut
	if err := held.Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() bool { return strings.Contains(heldOut.String(), "read 4096/4096") })
	next := s.other.Issue(t, "localhost", testcerts.Options{})
	s.serverFiles(t, &cfg, next, nil)
	if err := in.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if err := held.Wait(); err != nil || strings.Count(heldOut.String(), "read 4096/4096") != 2 {
		t.Fatalf("connected client across a reload: %v\n%s", err, heldOut)
	}
	if out, err := nbdinfoTLS(addr, "secure", good); err == nil {
		t.Fatalf("after the reload a client trusting only the old CA still connected:\n%s", out)
	}
	if out, err := nbdinfoTLS(addr, "secure", wrongCA); err != nil {
		t.Fatalf("after the reload, a client trusting the new CA: %v\n%s", err, out)
	}

	// Changed files are picked up without a signal (polled every 2 s).
	s.serverFiles(t, &cfg, s.ca.Issue(t, "localhost", testcerts.Options{}), nil)
	waitFor(t, 15*time.Second, func() bool { _, err := nbdinfoTLS(addr, "secure", good); return err == nil })

	// An expired certificate is not loaded; the current one stays.
	s.serverFiles(t, &cfg, s.ca.Issue(t, "localhost", testcerts.Options{Expired: true}), nil)
	if err := in.ReloadTLS(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("reload of an expired certificate: %v", err)
	}
	if out, err := nbdinfoTLS(addr, "secure", good); err != nil {
		t.Fatalf("after a refused reload: %v\n%s", err, out)
	}
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func waitFor(t *testing.T, limit time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in time")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Mutual TLS on a listener off loopback (FORCEDTLS): a plain client gets
// NBD_REP_ERR_TLS_REQD for anything; clients without a certificate, with
// one from another CA or an expired one are refused; a certificate's
// common name is a principal (cert:CN) with its role.
func TestNBDMutualTLS(t *testing.T) {
	for _, tool := range []string{"qemu-io", "nbdinfo"} {
		need(t, tool)
	}
	s := newTLSSetup(t)
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	s.serverFiles(t, &cfg, s.server, s.ca)
	cfg.Reader = []string{"cert:backup"}
	cfg.Operator = []string{"cert:hypervisor"}
	cfg.NBDTCPRole = "none"
	var err error
	if cfg.NBDTCPListener, err = net.Listen("tcp", "0.0.0.0:0"); err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + portOf(cfg.NBDTCPListener.Addr().String())
	in := daemontest.Start(t, &cfg)
	createDisk(t, in, "vm", "1M")

	for _, export := range []string{"", "vm"} {
		if got := optionReply(t, addr, export); got != repErrTLSReqd {
			t.Fatalf("plain client on a forced-TLS listener (export %q): reply %#x, want NBD_REP_ERR_TLS_REQD", export, got)
		}
	}
	hv := s.ca.Issue(t, "hypervisor", testcerts.Options{Client: true})
	backup := s.ca.Issue(t, "backup", testcerts.Options{Client: true})
	stranger := s.ca.Issue(t, "stranger", testcerts.Options{Client: true})
	expired := s.ca.Issue(t, "hypervisor", testcerts.Options{Client: true, Expired: true})
	foreign := s.other.Issue(t, "hypervisor", testcerts.Options{Client: true})

	if out, err := qemuIOTLS(addr, "vm", s.client(t, "hv", s.ca, &hv), "write -P 0x33 0 64k", "read -P 0x33 0 64k"); err != nil || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("operator certificate: %v\n%s", err, out)
	}
	if out, err := nbdinfoTLS(addr, "vm", s.client(t, "hv-nbdinfo", s.ca, &hv)); err != nil {
		t.Fatalf("nbdinfo with a client certificate: %v\n%s", err, out)
	}
	for name, creds := range map[string]string{
		"no certificate":      s.client(t, "none", s.ca, nil),
		"another CA's":        s.client(t, "foreign", s.ca, &foreign),
		"expired certificate": s.client(t, "expired", s.ca, &expired),
	} {
		// Refused by TLS itself, not later for want of a role.
		if out, err := qemuIOTLS(addr, "vm", creds, "-r", "read 0 4k"); err == nil || strings.Contains(out, "no role") {
			t.Errorf("client with %s was not refused by the TLS handshake: %v\n%s", name, err, out)
		}
	}
	backupCreds := s.client(t, "backup", s.ca, &backup)
	if out, err := qemuIOTLS(addr, "vm", backupCreds, "-r", "read -P 0x33 0 64k"); err != nil || !strings.Contains(out, "read 65536/65536") {
		t.Fatalf("reader certificate, read-only: %v\n%s", err, out)
	}
	if out, err := qemuIOTLS(addr, "vm", backupCreds, "write 0 4k"); err == nil || !strings.Contains(out, "Permission denied") {
		t.Fatalf("reader certificate, writing: %v\n%s", err, out)
	}
	if out, err := qemuIOTLS(addr, "vm", s.client(t, "stranger", s.ca, &stranger), "read 0 4k"); err == nil {
		t.Fatalf("a certificate no role names was served:\n%s", out)
	}
}

// The probe agrees with a reference server: qemu-nbd with TLS answers a
// plain NBD_OPT_GO with NBD_REP_ERR_TLS_REQD too.
func TestNBDTLSProbeAgainstQemuNBD(t *testing.T) {
	need(t, "qemu-nbd")
	s := newTLSSetup(t)
	srvDir := testcerts.ServerDir(t, filepath.Join(s.dir, "qemu-nbd"), s.ca, s.server)
	img := filepath.Join(s.dir, "img.raw")
	if err := os.WriteFile(img, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "qemu-nbd", "--object", "tls-creds-x509,id=tls0,endpoint=server,dir="+srvDir,
		"--tls-creds", "tls0", "-f", "raw", "-b", "127.0.0.1", "-p", portOf(addr), "-x", "ref", "-t", img)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cancel(); cmd.Wait() }()
	waitFor(t, 10*time.Second, func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if got := optionReply(t, addr, "ref"); got != repErrTLSReqd {
		t.Fatalf("qemu-nbd answered a plain NBD_OPT_GO with %#x, want NBD_REP_ERR_TLS_REQD", got)
	}
	// qemu-nbd verifies client certificates by default: one without is
	// refused, as by cairnd with tls_client_ca; one with is served.
	if out, err := nbdinfoTLS(addr, "ref", s.client(t, "ref-none", s.ca, nil)); err == nil {
		t.Fatalf("qemu-nbd served a client without a certificate:\n%s", out)
	}
	own := s.ca.Issue(t, "client", testcerts.Options{Client: true})
	if out, err := nbdinfoTLS(addr, "ref", s.client(t, "ref-client", s.ca, &own)); err != nil {
		t.Fatalf("nbdinfo over TLS to qemu-nbd with the same certificates: %v\n%s", err, out)
	}
}
