package nbd_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// Tests against real NBD clients: qemu-img, qemu-io, nbdinfo, nbdcopy,
// fio. Each skips when its tool is missing.

// randomImage writes a file of fixtureSize: random data with a hole every
// other MiB, so copies exercise both data and zero paths.
func randomImage(t *testing.T, path string, seed uint64) []byte {
	t.Helper()
	data := make([]byte, fixtureSize)
	rng := rand.New(rand.NewPCG(seed, seed))
	for mib := 0; mib < fixtureSize>>20; mib += 2 {
		for i := mib << 20; i < (mib+1)<<20; i += 8 {
			v := rng.Uint64()
			for b := range 8 {
				data[i+b] = byte(v >> (8 * b))
			}
		}
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return data
}

// diskBytes reads the whole disk export's backing file.
func (f *fixture) diskBytes(t *testing.T) []byte {
	t.Helper()
	got := make([]byte, fixtureSize)
	if err := f.disk.ReadAt(context.Background(), got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestQemuImg(t *testing.T) {
	need(t, "qemu-img")
	f := newFixture(t)
	dir := t.TempDir()

	var info struct {
		Size   int64  `json:"virtual-size"`
		Format string `json:"format"`
	}
	if err := json.Unmarshal([]byte(run(t, "qemu-img", "info", "--output=json", f.uri("disk"))), &info); err != nil {
		t.Fatal(err)
	}
	if info.Size != fixtureSize || info.Format != "raw" {
		t.Fatalf("qemu-img info: %+v", info)
	}

	src := filepath.Join(dir, "src.img")
	want := randomImage(t, src, 1)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", src, f.uri("disk"))
	if !bytes.Equal(f.diskBytes(t), want) {
		t.Fatal("convert into the export: content differs")
	}
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", src, f.uri("disk"))

	out := filepath.Join(dir, "out.img")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", f.uri("disk"), out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("convert out of the export: content differs")
	}

	// compare must notice a difference, or it proves nothing above.
	other := filepath.Join(dir, "other.img")
	randomImage(t, other, 2)
	if out, err := runErr("qemu-img", "compare", "-f", "raw", "-F", "raw", other, f.uri("disk")); err == nil {
		t.Fatalf("qemu-img compare found different images identical:\n%s", out)
	}
}

func TestQemuIO(t *testing.T) {
	need(t, "qemu-io")
	f := newFixture(t)
	cmds := []string{
		"write -P 0x5a 0 64k",
		"read -P 0x5a 0 64k",
		"write -P 0x33 64k 64k",
		"write -z 64k 64k",
		"read -P 0 64k 64k",
		"write -P 0x44 128k 64k",
		"discard 128k 64k",
		"write -P 0x55 192k 4k",
		"write -f -P 0x66 196k 4k", // FUA
		"flush",
	}
	for i := range 8 {
		cmds = append(cmds, "aio_write -P 0x"+strconv.FormatInt(int64(0x10+i), 16)+" "+strconv.Itoa(1+i)+"M 256k")
	}
	cmds = append(cmds, "aio_flush")
	for i := range 8 {
		cmds = append(cmds, "read -P 0x"+strconv.FormatInt(int64(0x10+i), 16)+" "+strconv.Itoa(1+i)+"M 256k")
	}
	args := []string{"-f", "raw"}
	for _, c := range cmds {
		args = append(args, "-c", c)
	}
	out := run(t, "qemu-io", append(args, f.uri("disk"))...)
	if strings.Contains(out, "fail") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io reported a failure:\n%s", out)
	}
	got := f.diskBytes(t)
	want := map[int64]byte{0: 0x5a, 64 << 10: 0, 128 << 10: 0, 192 << 10: 0x55, 196 << 10: 0x66}
	for i := range 8 {
		want[int64(1+i)<<20] = byte(0x10 + i)
	}
	for off, b := range want {
		if got[off] != b {
			t.Errorf("byte at %d is %#x, want %#x", off, got[off], b)
		}
	}

	// A read-only export: reads work, writes are refused.
	if out := run(t, "qemu-io", "-r", "-f", "raw", "-c", "read -P 0xab 0 1M", f.uri("ro")); strings.Contains(out, "fail") {
		t.Fatalf("read of the read-only export:\n%s", out)
	}
	if out, _ := runErr("qemu-io", "-f", "raw", "-c", "write -P 1 0 4k", f.uri("ro")); !strings.Contains(out, "Permission denied") {
		t.Fatalf("write to the read-only export was not refused:\n%s", out)
	}
}

func TestNbdinfo(t *testing.T) {
	need(t, "nbdinfo")
	f := newFixture(t)
	type export struct {
		Name      string   `json:"export-name"`
		Desc      string   `json:"description"`
		Size      int64    `json:"export-size"`
		Contexts  []string `json:"contexts"`
		ReadOnly  bool     `json:"is_read_only"`
		MultiConn bool     `json:"can_multi_conn"`
		Trim      bool     `json:"can_trim"`
		Zero      bool     `json:"can_zero"`
		FastZero  bool     `json:"can_fast_zero"`
		Flush     bool     `json:"can_flush"`
		FUA       bool     `json:"can_fua"`
		Cache     bool     `json:"can_cache"`
		DF        bool     `json:"can_df"`
		MinBlock  int      `json:"block_size_minimum"`
		PrefBlock int      `json:"block_size_preferred"`
		MaxBlock  int      `json:"block_size_maximum"`
	}
	type info struct {
		Protocol   string   `json:"protocol"`
		Structured bool     `json:"structured"`
		Exports    []export `json:"exports"`
	}
	parse := func(out string) info {
		var i info
		if err := json.Unmarshal([]byte(out), &i); err != nil {
			t.Fatalf("nbdinfo output: %v\n%s", err, out)
		}
		return i
	}
	tests := []struct {
		name string
		want export
	}{
		{"disk", export{Name: "disk", Desc: "test disk", Size: fixtureSize, Contexts: []string{"base:allocation"}, MultiConn: true,
			Trim: true, Zero: true, FastZero: true, Flush: true, FUA: true, Cache: true, DF: true, MinBlock: 1, PrefBlock: 4096, MaxBlock: 32 << 20}},
		{"ro", export{Name: "ro", Desc: "read-only disk", Size: fixtureSize, Contexts: []string{"base:allocation"}, ReadOnly: true,
			Cache: true, DF: true, MinBlock: 1, PrefBlock: 4096, MaxBlock: 32 << 20}},
		{"mem", export{Name: "mem", Size: fixtureSize, Contexts: []string{"base:allocation", "qemu:dirty-bitmap:x"},
			Trim: true, Zero: true, FastZero: true, Flush: true, FUA: true, Cache: true, DF: true, MinBlock: 512, PrefBlock: 4096, MaxBlock: 32 << 20}},
	}
	for _, tt := range tests {
		i := parse(run(t, "nbdinfo", "--json", f.uri(tt.name)))
		if i.Protocol != "newstyle-fixed" || !i.Structured || len(i.Exports) != 1 {
			t.Fatalf("%s: %+v", tt.name, i)
		}
		got := i.Exports[0]
		slices.Sort(got.Contexts)
		if !slices.Equal(got.Contexts, tt.want.Contexts) {
			t.Errorf("%s contexts %q, want %q", tt.name, got.Contexts, tt.want.Contexts)
		}
		got.Contexts, tt.want.Contexts = nil, nil
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", tt.name, got, tt.want)
		}
	}

	list := parse(run(t, "nbdinfo", "--list", "--json", "nbd+unix://?socket="+f.sock))
	var names []string
	for _, e := range list.Exports {
		names = append(names, e.Name)
	}
	if !slices.Equal(names, []string{"disk", "mem", "ro"}) {
		t.Fatalf("nbdinfo --list: %q", names)
	}

	type extent struct {
		Offset, Length int64
		Type           int
	}
	mapOf := func(args ...string) []extent {
		var out []extent
		if err := json.Unmarshal([]byte(run(t, "nbdinfo", append([]string{"--json"}, args...)...)), &out); err != nil {
			t.Fatal(err)
		}
		return out
	}
	c := open(t, f.sock, "mem", true)
	if r := c.do(cCmdWrite, 0, 2<<20, 1<<20, bytes.Repeat([]byte{1}, 1<<20)); r.errno != 0 {
		t.Fatal(r)
	}
	wantAlloc := []extent{{0, 2 << 20, 3}, {2 << 20, 1 << 20, 0}, {3 << 20, fixtureSize - 3<<20, 3}}
	if got := mapOf("--map", f.uri("mem")); !slices.Equal(got, wantAlloc) {
		t.Errorf("--map: %+v, want %+v", got, wantAlloc)
	}
	wantDirty := []extent{{0, 64 << 10, 0}, {64 << 10, 64 << 10, 1}, {128 << 10, 1<<20 - 128<<10, 0}, {1 << 20, 128 << 10, 1}, {1<<20 + 128<<10, fixtureSize - 1<<20 - 128<<10, 0}}
	if got := mapOf("--map=qemu:dirty-bitmap:x", f.uri("mem")); !slices.Equal(got, wantDirty) {
		t.Errorf("--map=qemu:dirty-bitmap:x: %+v, want %+v", got, wantDirty)
	}
}

func TestNbdcopy(t *testing.T) {
	need(t, "nbdcopy")
	f := newFixture(t)
	dir := t.TempDir()
	src := filepath.Join(dir, "src.img")
	want := randomImage(t, src, 3)
	opened := f.exports.Opened("disk")
	// nbdcopy uses at most one connection per thread.
	run(t, "nbdcopy", "--connections=4", "--threads=4", "--flush", src, f.uri("disk"))
	if !bytes.Equal(f.diskBytes(t), want) {
		t.Fatal("nbdcopy into the export: content differs")
	}
	if n := f.exports.Opened("disk") - opened; n < 4 {
		t.Errorf("nbdcopy --connections=4 opened the export %d times; multi-conn was not used", n)
	}
	out := filepath.Join(dir, "out.img")
	if err := os.WriteFile(out, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	run(t, "nbdcopy", "--connections=4", "--threads=4", f.uri("disk"), out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("nbdcopy out of the export: content differs")
	}
}

func TestFio(t *testing.T) {
	need(t, "fio")
	f := newFixture(t)
	out := run(t, "fio", "--name=verify", "--ioengine=nbd", "--uri="+f.uri("disk"),
		"--rw=randwrite", "--bsrange=4k-64k", "--iodepth=32", "--size=8M",
		"--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0", "--output-format=json")
	var res struct {
		Jobs []struct {
			Error int
			Read  struct {
				IOBytes int64 `json:"io_bytes"`
			}
			Write struct {
				IOBytes int64 `json:"io_bytes"`
			}
		}
	}
	out = out[strings.IndexByte(out, '{')+1:] // after "fio: connected to NBD server"
	if err := json.Unmarshal([]byte("{"+out), &res); err != nil || len(res.Jobs) != 1 {
		t.Fatalf("fio output: %v\n%s", err, out)
	}
	j := res.Jobs[0]
	// The verify phase reads back everything written.
	if j.Error != 0 || j.Write.IOBytes < 8<<20 || j.Read.IOBytes < j.Write.IOBytes {
		t.Fatalf("fio: error %d, wrote %d, verified %d bytes", j.Error, j.Write.IOBytes, j.Read.IOBytes)
	}
}
