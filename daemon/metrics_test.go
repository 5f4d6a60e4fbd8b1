package daemon_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
)

// scrape fetches /metrics from the API socket (socket set) or a TCP
// address.
func scrape(t *testing.T, socket, addr string) string {
	t.Helper()
	client := http.DefaultClient
	url := "http://" + addr + "/metrics"
	if socket != "" {
		client = &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}}}
		url = "http://cairnd/metrics"
	}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET %s: %d %s\n%s", url, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return string(body)
}

// sample is the value of the series whose name and labels are exactly
// series as the text format writes it (labels sorted); -1 when absent.
func sample(text, series string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if rest, ok := strings.CutPrefix(line, series+" "); ok {
			v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// TestMetrics: the I/O qemu-io drives through NBD shows in the counters,
// by disk and operation, on the API socket and on --metrics-listen; the
// snapshot, store and task figures are there; promtool accepts the
// output.
func TestMetrics(t *testing.T) {
	need(t, "qemu-io")
	cfg := daemontest.Config(t, daemontest.DataDir(t))
	cfg.MetricsListen = "127.0.0.1:0"
	in := daemontest.Start(t, &cfg)
	ctx := context.Background()
	createDisk(t, in, "d", "8M")
	createDisk(t, in, "quiet", "1M")
	qemuIO(t, nbdURI(in, "d"), "write -P 0xab 0 1M", "write -P 0xcd 2M 64k", "read -P 0xab 0 512k", "flush")
	snap, err := in.Client.CreateSnapshot(ctx, "d", api.CreateSnapshotRequest{Name: "s1"})
	if err != nil {
		t.Fatal(err)
	}
	waitSnapshot(t, in.Client, "d", "s1")
	waitTask(t, in.Client, snap.Task)
	qemuIO(t, nbdURI(in, "d@s1"), "read -P 0xcd 2M 64k")

	info := in.Info()
	if info.MetricsListen == "" {
		t.Fatal("info has no metrics_listen")
	}
	viaSocket := scrape(t, info.APISocket, "")
	viaTCP := scrape(t, "", info.MetricsListen)
	for name, text := range map[string]string{"socket": viaSocket, "tcp": viaTCP} {
		for series, want := range map[string]float64{
			`cairn_io_bytes_total{disk="d",frontend="nbd",op="write"}`:     1<<20 + 64<<10,
			`cairn_io_bytes_total{disk="d",frontend="nbd",op="read"}`:      512<<10 + 64<<10,
			`cairn_io_bytes_total{disk="quiet",frontend="nbd",op="write"}`: -1, // never opened
			`cairn_snapshots{kind="manual",state="ready"}`:                 1,
			`cairn_disks`:                                    2,
			`cairn_copyout_backlog_bytes`:                    0,
			`cairn_tasks{kind="copy-out",state="succeeded"}`: 1,
			`cairn_snapshot_hold_seconds_count`:              1,
			`cairn_policies`:                                 0,
		} {
			if got := sample(text, series); got != want {
				t.Errorf("%s: %s = %v, want %v", name, series, got, want)
			}
		}
		for _, series := range []string{`cairn_io_operations_total{disk="d",frontend="nbd",op="write"}`,
			`cairn_io_operations_total{disk="d",frontend="nbd",op="flush"}`,
			`cairn_io_duration_seconds_count{frontend="nbd",op="write"}`, `cairn_copyout_bytes_total`,
			`cairn_store_filesystem_free_bytes`, `cairn_store_reserve_bytes{kind="size"}`, `cairn_store_snapshots_stop_below_bytes`, `cairn_store_space_state{state="ok"}`} {
			if got := sample(text, series); got <= 0 {
				t.Errorf("%s: %s = %v, want more than 0", name, series, got)
			}
		}
	}
	// No label names a snapshot: the series are bounded by the disks.
	if regexp.MustCompile(`\{[^}]*s1[^}]*\}`).MatchString(viaSocket) {
		t.Error("a series is labelled with a snapshot's name")
	}
	need(t, "promtool")
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(viaSocket)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// TestMetricsFUSE: reads and writes of a disk's file in the FUSE view
// count under frontend="fuse".
func TestMetricsFUSE(t *testing.T) {
	in, dir := startWithFUSE(t)
	createDisk(t, in, "d", "4M")
	path := filepath.Join(dir, "d", "disk.raw")
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{7}, 128<<10), 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	text := scrape(t, in.Info().APISocket, "")
	if got := sample(text, `cairn_io_bytes_total{disk="d",frontend="fuse",op="write"}`); got != 128<<10 {
		t.Errorf("fuse write bytes %v, want %d\n%s", got, 128<<10, grep(text, "fuse"))
	}
	if got := sample(text, `cairn_io_operations_total{disk="d",frontend="fuse",op="flush"}`); got < 1 {
		t.Errorf("fuse flushes %v, want at least the fsync", got)
	}
}

func grep(text, what string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, what) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAlertRules: the shipped alert rules load (promtool check rules) and
// each fires on the series that should raise it and no other (promtool
// test rules, contrib/prometheus/cairn-alerts_test.yml).
func TestAlertRules(t *testing.T) {
	need(t, "promtool")
	dir := filepath.Join("..", "contrib", "prometheus")
	for _, args := range [][]string{{"check", "rules", "cairn-alerts.yml"}, {"test", "rules", "cairn-alerts_test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}
