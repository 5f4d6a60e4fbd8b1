package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairn-storage/cairn/daemon/api"
	"github.com/cairn-storage/cairn/daemon/daemontest"
	"github.com/cairn-storage/cairn/transfer"
)

// Exports and imports against real peers: qemu-img checks and compares
// every file cairn writes, and files qemu-img made are imported.

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is missing (scripts/deps.sh installs it)", tool)
		}
	}
}

// sh runs a command that must succeed and returns its output.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ext4Image makes a raw image of size holding an ext4 with a few files.
func ext4Image(t *testing.T, dir, size string) string {
	t.Helper()
	src := filepath.Join(dir, "files")
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "hostname"), []byte("vm1\n"), 0o644)
	os.WriteFile(filepath.Join(src, "big"), []byte(strings.Repeat("cairn export test data ", 200000)), 0o644)
	raw := filepath.Join(dir, "ext4.raw")
	sh(t, "truncate", "-s", size, raw)
	sh(t, "mkfs.ext4", "-q", "-d", src, raw)
	return raw
}

// uri is the NBD URI of export on in.
func uri(in *daemontest.Instance, export string) string {
	return "nbd+unix:///" + export + "?socket=" + in.Info().NBDSocket
}

// compare runs qemu-img compare (content; a larger image's tail must be
// zeros) and fails the test if the images differ.
func compare(t *testing.T, fmtA, a, fmtB, b string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", "compare", "-f", fmtA, "-F", fmtB, a, b).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img compare %s %s: %v\n%s", a, b, err, out)
	}
}

// diskWithExt4 creates disk name holding an ext4 and snapshots it as s1.
func diskWithExt4(t *testing.T, in *daemontest.Instance, dir, name string) string {
	t.Helper()
	sock := in.Client.Socket
	ok(t, sock, "disk", "create", name, "--size", "32M")
	raw := ext4Image(t, dir, "32M")
	sh(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", raw, uri(in, name))
	ok(t, sock, "snapshot", "create", name, "s1", "--wait")
	return raw
}

func TestExportImportEveryFormat(t *testing.T) {
	needTools(t, "qemu-img", "mkfs.ext4")
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	dir := t.TempDir()
	raw := diskWithExt4(t, in, dir, "src")
	snap := uri(in, "src@s1")

	for _, c := range []struct {
		name, format string
		flags, qemu  []string // cairn's flags; qemu-img convert's for the same file
		checked      bool     // qemu-img check has a check for the format
	}{
		{"qcow2", "qcow2", nil, nil, true},
		{"qcow2-compressed", "qcow2", []string{"--compress"}, []string{"-c"}, true},
		{"vmdk", "vmdk", nil, nil, true},
		{"vmdk-stream", "vmdk", []string{"--compress"}, []string{"-c", "-o", "subformat=streamOptimized"}, true},
		{"vhd", "vpc", []string{"--format", "vhd"}, nil, false},
		{"vhd-azure", "vpc", []string{"--format", "vhd", "--subformat", "fixed", "--force-size"}, []string{"-o", "subformat=fixed,force_size=on"}, false},
		{"vhdx", "vhdx", []string{"--format", "vhdx"}, nil, true},
		{"raw", "raw", []string{"--format", "raw"}, nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			file := filepath.Join(dir, c.name+".img")
			args := append([]string{"export", "src@s1", file, "-o", "json"}, c.flags...)
			if !strings.Contains(strings.Join(c.flags, " "), "--format") {
				args = append(args, "--format", c.format)
			}
			var res transfer.Exported
			if err := json.Unmarshal([]byte(ok(t, sock, args...)), &res); err != nil || res.Snapshot != "s1" || res.Temporary {
				t.Fatalf("export answer %+v, %v", res, err)
			}
			if c.checked {
				sh(t, "qemu-img", "check", "-f", c.format, file)
			}
			if out := sh(t, "qemu-img", "info", "--output=json", "-f", c.format, file); !strings.Contains(out, `"format": "`+c.format+`"`) {
				t.Fatalf("qemu-img info says:\n%s", out)
			}
			compare(t, "raw", snap, c.format, file)
			// The same data converted by qemu-img itself reads the same.
			qfile := filepath.Join(dir, c.name+".qemu")
			sh(t, "qemu-img", append(append([]string{"convert", "-f", "raw", "-O", c.format}, c.qemu...), raw, qfile)...)
			compare(t, c.format, qfile, c.format, file)

			ok(t, sock, "import", file, "in-"+c.name)
			compare(t, "raw", uri(in, "in-"+c.name), "raw", snap)
			ok(t, sock, "import", qfile, "q-"+c.name, "--format", formatName(c.format))
			compare(t, "raw", uri(in, "q-"+c.name), "raw", snap)
		})
	}

	// Zeros are not written: the imported disk's first snapshot stores
	// about what the ext4 holds, far less than its 32 MiB.
	ok(t, sock, "snapshot", "create", "in-qcow2", "first", "--wait")
	s, err := in.Client.Snapshot(context.Background(), "in-qcow2", "first")
	src, _ := in.Client.Snapshot(context.Background(), "src", "s1")
	if err != nil || s.WrittenBytes == 0 || s.WrittenBytes > src.WrittenBytes {
		t.Fatalf("first snapshot after the import holds %d bytes (the source's holds %d): %v", s.WrittenBytes, src.WrittenBytes, err)
	}
	// Compact: the compressed qcow2 is smaller than the data.
	if st, err := os.Stat(filepath.Join(dir, "qcow2-compressed.img")); err != nil || st.Size() >= int64(src.WrittenBytes) {
		t.Fatalf("compressed qcow2: %v, %v; data %d", st.Size(), err, src.WrittenBytes)
	}
}

func formatName(qemu string) string {
	f, _ := transfer.LookupFormat(qemu)
	return f.Name
}

func TestExportLiveAndIncremental(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "mkfs.ext4")
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	dir := t.TempDir()
	diskWithExt4(t, in, dir, "vm1")
	full := filepath.Join(dir, "full.qcow2")
	ok(t, sock, "export", "vm1@s1", full)

	// Writes after s1: 64 KiB, 4 KiB in another block, zeros over data.
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0xcd 20M 64k", "-c", "write -P 0xee 24M 4k", "-c", "write -z 0 64k", uri(in, "vm1"))
	ok(t, sock, "snapshot", "create", "vm1", "s2", "--wait")
	inc := filepath.Join(dir, "inc.qcow2")
	ok(t, sock, "export", "vm1@s2", inc, "--incremental-from", "s1", "--backing", full)
	sh(t, "qemu-img", "check", inc)
	compare(t, "qcow2", inc, "raw", uri(in, "vm1@s2"))
	// Only the changed blocks are in the overlay: 3 blocks of 64 KiB.
	var m []struct {
		Start, Length int64
		Depth         int
		Present, Data bool
		Zero          bool
	}
	if err := json.Unmarshal([]byte(sh(t, "qemu-img", "map", "--output=json", inc)), &m); err != nil {
		t.Fatal(err)
	}
	var own int64
	for _, e := range m {
		if e.Depth == 0 && e.Present {
			own += e.Length
		}
	}
	if own < 64<<10+4<<10 || own > 3*64<<10 {
		t.Fatalf("the overlay holds %d bytes of its own; want the 3 changed 64 KiB blocks at most\n%+v", own, m)
	}
	if info := sh(t, "qemu-img", "info", inc); !strings.Contains(info, "backing file: full.qcow2") {
		t.Fatalf("overlay's backing file (relative to it):\n%s", info)
	}

	// A live disk is exported from a snapshot taken for it, deleted after.
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x77 28M 64k", uri(in, "vm1"))
	live := filepath.Join(dir, "live.qcow2")
	var res transfer.Exported
	if err := json.Unmarshal([]byte(ok(t, sock, "export", "vm1", live, "--incremental-from", "s2", "--backing", inc, "-o", "json")), &res); err != nil || !res.Temporary {
		t.Fatalf("live export: %+v, %v", res, err)
	}
	ok(t, sock, "import", live, "vm1-copy")
	compare(t, "raw", uri(in, "vm1-copy"), "raw", uri(in, "vm1"))
	snaps, _ := in.Client.Snapshots(context.Background(), "vm1")
	if len(snaps) != 2 {
		t.Fatalf("the export's snapshot was not deleted: %+v", snaps)
	}
	tasks, _ := in.Client.Tasks(context.Background(), api.TaskFilter{Kind: api.TaskExport})
	if len(tasks) != 3 || tasks[0].State != api.TaskSucceeded || tasks[0].TotalBytes != 32<<20 {
		t.Fatalf("export tasks: %+v", tasks)
	}

	// Existing files are not overwritten; a mismatched pair of flags is refused.
	_, errs, code := cli(t, sock, "export", "vm1@s1", full)
	if code != exitError || !strings.Contains(errs, "exists: cairn does not overwrite files") {
		t.Fatalf("export over a file: exit %d, %s", code, errs)
	}
	_, errs, code = cli(t, sock, "export", "vm1@s2", filepath.Join(dir, "x.qcow2"), "--incremental-from", "s1")
	if code != exitError || !strings.Contains(errs, "needs both --incremental-from SNAP and --backing FILE") {
		t.Fatalf("incremental without backing: exit %d, %s", code, errs)
	}
}

func TestImportRefusesHostileImages(t *testing.T) {
	needTools(t, "qemu-img")
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	dir := t.TempDir()
	other := t.TempDir()
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", filepath.Join(other, "base.qcow2"), "16M")
	outside := filepath.Join(dir, "outside.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-b", filepath.Join(other, "base.qcow2"), "-F", "qcow2", outside)
	huge := filepath.Join(dir, "huge.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", huge, "100T")
	loop := filepath.Join(dir, "loop.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "loop.qcow2", "-F", "qcow2", loop, "16M")
	trunc := filepath.Join(dir, "trunc.qcow2")
	sh(t, "qemu-img", "create", "-q", "-f", "qcow2", trunc, "16M")
	sh(t, "qemu-io", "-f", "qcow2", "-c", "write -P 1 0 4M", trunc)
	sh(t, "truncate", "-s", "300K", trunc)

	for _, c := range []struct{ name, file, want string }{
		{"backing outside", outside, "outside the allowed directories"},
		{"huge", huge, "more than the largest disk cairn makes"},
		{"backing loop", loop, "the backing chain loops"},
		{"truncated", trunc, "is corrupt"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, errs, code := cli(t, sock, "import", c.file, "bad")
			if code != exitError || !strings.Contains(errs, "image refused") || !strings.Contains(errs, c.want) {
				t.Fatalf("import: exit %d, %s; want a refusal saying %q", code, errs, c.want)
			}
			if disks, err := in.Client.Disks(context.Background()); err != nil || len(disks) != 0 {
				t.Fatalf("after a refused import: disks %+v, %v", disks, err)
			}
		})
	}
	ok(t, sock, "info") // cairnd is unaffected
}

func TestMachineImageExportImport(t *testing.T) {
	needTools(t, "qemu-img", "mkfs.ext4")
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	dir := t.TempDir()
	diskWithExt4(t, in, dir, "web1-root")
	ok(t, sock, "disk", "create", "web1-data", "--size", "8M")
	sh(t, "qemu-io", "-f", "raw", "-c", "write -P 0x42 1M 1M", uri(in, "web1-data"))
	cfg := filepath.Join(dir, "domain.xml")
	os.WriteFile(cfg, []byte("<domain><disk>web1-root</disk><disk>web1-data</disk></domain>"), 0o644)
	ok(t, sock, "machine", "create", "web1", "--disk", "web1-root", "--disk", "web1-data", "--config", cfg)
	ok(t, sock, "machine", "snapshot", "create", "web1", "gold", "--consistency", "crash", "--wait")
	ok(t, sock, "image", "create", "golden", "--machine", "web1", "--machine-snapshot", "gold", "--wait")

	out := filepath.Join(dir, "golden")
	ok(t, sock, "image", "export", "golden", out, "--compress")
	var m transfer.Manifest
	data, err := os.ReadFile(filepath.Join(out, transfer.ManifestName))
	if err == nil {
		m, err = transfer.ParseManifest(data)
	}
	if err != nil || len(m.Disks) != 2 || !m.Disks[0].Boot || m.Disks[1].Name != "web1-data" || m.Config == nil || m.Config.File != "config.xml" || m.Source != "web1@gold" {
		t.Fatalf("manifest %+v, %v", m, err)
	}
	for _, d := range m.Disks {
		sh(t, "qemu-img", "check", filepath.Join(out, d.File))
		compare(t, "qcow2", filepath.Join(out, d.File), "raw", uri(in, "image:golden/"+d.Name))
	}
	// The image is not deleted while an export of it could read it; after, it is.
	ok(t, sock, "import", out, "web2")
	mach, err := in.Client.Machine(context.Background(), "web2")
	if err != nil || strings.Join(mach.Disks, ",") != "web2-root,web2-data" || mach.Config == nil ||
		mach.Config.Data != "<domain><disk>web2-root</disk><disk>web2-data</disk></domain>" {
		t.Fatalf("imported machine %+v, %v", mach, err)
	}
	compare(t, "raw", uri(in, "web2-root"), "raw", uri(in, "web1-root@gold"))
	compare(t, "raw", uri(in, "web2-data"), "raw", uri(in, "web1-data@gold"))

	// A file changed in transit is refused before anything is made.
	f, _ := os.OpenFile(filepath.Join(out, m.Disks[1].File), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte("tampered"))
	f.Close()
	_, errs, code := cli(t, sock, "import", out, "web3")
	if code != exitError || !strings.Contains(errs, "does not match its SHA-256") {
		t.Fatalf("tampered import: exit %d, %s", code, errs)
	}
	if _, err := in.Client.Disk(context.Background(), "web3-root"); err == nil {
		t.Fatal("a refused machine import left a disk behind")
	}
	_, errs, code = cli(t, sock, "image", "export", "golden", out)
	if code != exitError || !strings.Contains(errs, "exists") {
		t.Fatalf("export into an existing directory: exit %d, %s", code, errs)
	}
}

func TestCheck(t *testing.T) {
	needTools(t, "qemu-img", "mkfs.ext4", "nbdfuse", "e2fsck")
	if os.Geteuid() != 0 {
		t.Skip("needs root: loop devices and mounts")
	}
	in := daemontest.Start(t, nil)
	sock := in.Client.Socket
	dir := t.TempDir()
	raw := diskWithExt4(t, in, dir, "vm1")
	q := filepath.Join(dir, "vm1.qcow2")
	sh(t, "qemu-img", "convert", "-O", "qcow2", raw, q)

	report := func(args ...string) (inspectReport, int, string) {
		t.Helper()
		out, errs, code := cli(t, sock, append([]string{"check", "-o", "json"}, args...)...)
		var r inspectReport
		if err := json.Unmarshal([]byte(out), &r); err != nil {
			t.Fatalf("check %v: %v\n%s\n%s", args, err, out, errs)
		}
		return r, code, errs
	}
	for _, target := range []string{q, raw, "vm1@s1", "vm1"} {
		r, code, errs := report(target)
		if code != exitOK || r.Format == "" || len(r.Partitions) != 1 || r.Partitions[0].FSType != "ext4" || r.Partitions[0].Fsck != "clean" || !r.Partitions[0].Mounted {
			t.Fatalf("check %s: exit %d %s\n%+v", target, code, errs, r)
		}
	}
	if snaps, _ := in.Client.Snapshots(context.Background(), "vm1"); len(snaps) != 1 {
		t.Fatalf("check of the live disk left its snapshot: %+v", snaps)
	}
	// A damaged file: an error finding, exit 1, and nothing read further.
	data, _ := os.ReadFile(q)
	os.WriteFile(q, data[:len(data)/3], 0o644)
	r, code, _ := report(q)
	if code != exitError || r.Status != "error" || len(r.Findings) == 0 || r.Findings[0].Check != "image" {
		t.Fatalf("check of a truncated qcow2: exit %d\n%+v", code, r)
	}
	// The human form names each finding with what to do.
	out, _, _ := cli(t, sock, "check", raw)
	for _, want := range []string{"Partition table:", "STATUS", "fsck", "e2fsck -f -n: clean"} {
		if !strings.Contains(out, want) {
			t.Errorf("check's table lacks %q:\n%s", want, out)
		}
	}
}

// inspectReport is cairn check -o json's answer (inspect.Report).
type inspectReport struct {
	Format     string `json:"format"`
	Status     string `json:"status"`
	Partitions []struct {
		FSType  string `json:"fstype"`
		Fsck    string `json:"fsck"`
		Mounted bool   `json:"mounted"`
	} `json:"partitions"`
	Findings []struct {
		Check, Status, Message, Fix string
	} `json:"findings"`
}
