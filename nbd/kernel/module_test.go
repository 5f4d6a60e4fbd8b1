package kernel

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// LoadModule against module trees made here, with the real kmod reading
// them. Only the final finit_module(2) is replaced (Driver.insmod): this
// machine's kernel has no modules to load. The real load, in a kernel
// that has nbd as a module, is in the test VM (TestAttachInVM: nbd
// absent at boot, loaded by the first attach).

// moduleTree makes MODULES/RELEASE with modules.dep holding deps (and
// empty modules.alias and modules.builtin, as depmod writes them).
func moduleTree(t *testing.T, deps string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, kernelRelease())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"modules.dep": deps, "modules.alias": "", "modules.builtin": ""} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestLoadModuleAlreadyThere(t *testing.T) {
	sys := t.TempDir()
	os.MkdirAll(filepath.Join(sys, "module", "nbd"), 0o755)
	d := &Driver{Sys: sys, Modules: filepath.Join(t.TempDir(), "none"),
		insmod: func(string, string, int) error { t.Error("insmod called for a loaded module"); return nil }}
	loaded, err := d.LoadModule()
	if loaded || err != nil {
		t.Fatalf("LoadModule with /sys/module/nbd present = %v, %v; want false, nil", loaded, err)
	}
}

func TestLoadModuleLoadsWithDependencies(t *testing.T) {
	sys := t.TempDir()
	mods := moduleTree(t, "kernel/drivers/block/nbd.ko: kernel/lib/helper.ko.xz\nkernel/lib/helper.ko.xz:\n")
	var order []string
	d := &Driver{Sys: sys, Modules: mods, insmod: func(path, params string, flags int) error {
		order = append(order, strings.TrimPrefix(path, filepath.Join(mods, kernelRelease())+"/"))
		if filepath.Base(path) == "nbd.ko" {
			return os.MkdirAll(filepath.Join(sys, "module", "nbd"), 0o755) // as the kernel does
		}
		return nil
	}}
	loaded, err := d.LoadModule()
	if !loaded || err != nil {
		t.Fatalf("LoadModule = %v, %v; want true, nil", loaded, err)
	}
	if strings.Join(order, " ") != "kernel/lib/helper.ko.xz kernel/drivers/block/nbd.ko" {
		t.Fatalf("loaded %v; want the dependency, then nbd", order)
	}
}

func TestLoadModuleErrors(t *testing.T) {
	nbdTree := "kernel/drivers/block/nbd.ko:\n"
	for _, c := range []struct {
		name   string
		mods   string
		insmod func(string, string, int) error
		want   string // in the message
	}{
		{"no modules tree", filepath.Join(t.TempDir(), "none"), nil, "has no modules tree"},
		{"no nbd in the tree", moduleTree(t, "kernel/fs/ext4/ext4.ko:\n"), func(p string, _ string, _ int) error {
			t.Errorf("insmod %s: nbd is not in the tree", p)
			return nil
		}, "lists no nbd module"},
		{"not allowed", moduleTree(t, nbdTree), func(string, string, int) error { return unix.EPERM }, "CAP_SYS_MODULE"},
		{"loaded but absent", moduleTree(t, nbdTree), func(string, string, int) error { return nil }, "did not appear"},
		{"refused", moduleTree(t, nbdTree), func(string, string, int) error { return unix.ENOEXEC }, "exec format error"},
	} {
		d := &Driver{Sys: t.TempDir(), Modules: c.mods, insmod: c.insmod}
		loaded, err := d.LoadModule()
		if loaded || !errors.Is(err, ErrNoModule) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: LoadModule = %v, %v; want ErrNoModule saying %q", c.name, loaded, err, c.want)
		}
	}
}

// TestLoadModuleHere runs the real thing on this machine: with nbd
// neither loaded nor in a modules tree (as on the CI machines, whose
// kernel has no loadable modules), the error says why.
func TestLoadModuleHere(t *testing.T) {
	if _, err := os.Stat("/sys/module/nbd"); err == nil {
		t.Skip("this kernel has nbd loaded")
	}
	if _, err := os.Stat(filepath.Join("/lib/modules", kernelRelease(), "modules.dep")); err == nil {
		t.Skip("this kernel has a modules tree: loading nbd here would change the machine")
	}
	loaded, err := (&Driver{}).LoadModule()
	if loaded || !errors.Is(err, ErrNoModule) || !strings.Contains(err.Error(), kernelRelease()) {
		t.Fatalf("LoadModule here = %v, %v; want ErrNoModule naming kernel %s", loaded, err, kernelRelease())
	}
	t.Log(err)
}

func TestParseDevice(t *testing.T) {
	for in, want := range map[string]int{"/dev/nbd0": 0, "nbd12": 12, "/dev/nbd127": 127} {
		if got, err := ParseDevice(in); err != nil || got != want {
			t.Errorf("ParseDevice(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "nbd", "/dev/sda", "nbd-1", "nbd01", "/dev/nbd1p1", "/tmp/nbd1", "nbd 1"} {
		if _, err := ParseDevice(in); err == nil {
			t.Errorf("ParseDevice(%q): no error", in)
		}
	}
}
