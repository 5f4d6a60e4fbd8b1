package nbd_test

import "testing"

func TestSmoke(t *testing.T) {
	need(t, "qemu-img", "qemu-io", "nbdinfo")
	f := newFixture(t)
	t.Log(run(t, "qemu-img", "info", f.uri("disk")))
	t.Log(run(t, "qemu-io", "-f", "raw", "-c", "write -P 0x5a 0 64k", "-c", "read -P 0x5a 0 64k", "-c", "read -P 0 64k 64k", f.uri("disk")))
	t.Log(run(t, "nbdinfo", "--json", f.uri("mem")))
	t.Log(run(t, "nbdinfo", "--list", "nbd+unix://?socket="+f.sock))
	t.Log(run(t, "nbdinfo", "--map", f.uri("disk")))
	t.Log(run(t, "nbdinfo", "--map=qemu:dirty-bitmap:x", f.uri("mem")))
}
