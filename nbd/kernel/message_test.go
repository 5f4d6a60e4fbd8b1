package kernel

import (
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"github.com/cairn-storage/cairn/block/blocktest"
	"github.com/cairn-storage/cairn/nbd"
	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Every message, decoded with the numbers of the kernel's own headers
// (uapi_test.go), never with this package's constants: so a wrong
// constant shows up here as a wrong message, and the attribute sizes the
// kernel's policy checks (NLA_U32: 4 bytes, NLA_U64: 8) are checked too.

// attr is one decoded attribute: its type without flags, whether it was
// marked nested, its payload.
type attr struct {
	typ    uint16
	nested bool
	data   []byte
}

func decode(t *testing.T, b []byte) map[uint16]attr {
	t.Helper()
	attrs, err := netlink.UnmarshalAttributes(b)
	if err != nil {
		t.Fatalf("decode attributes: %v", err)
	}
	out := make(map[uint16]attr)
	for _, a := range attrs {
		typ := a.Type &^ (netlink.Nested | netlink.NetByteOrder)
		if _, dup := out[typ]; dup {
			t.Fatalf("attribute %d twice", typ)
		}
		out[typ] = attr{typ: typ, nested: a.Type&netlink.Nested != 0, data: a.Data}
	}
	return out
}

// kernelView decodes m as the kernel would, by the headers' numbers.
type kernelView struct {
	t     *testing.T
	h     map[string]uint64
	attrs map[uint16]attr
}

func view(t *testing.T, m genetlink.Message, cmd string) kernelView {
	t.Helper()
	h := uapi(t, "nbd-netlink.h", "nbd.h")
	if uint64(m.Header.Command) != h[cmd] || uint64(m.Header.Version) != h["NBD_GENL_VERSION"] {
		t.Fatalf("header %+v, want command %s (%d) version %d", m.Header, cmd, h[cmd], h["NBD_GENL_VERSION"])
	}
	return kernelView{t, h, decode(t, m.Data)}
}

func (v kernelView) get(name string) (attr, bool) {
	a, ok := v.attrs[uint16(v.h[name])]
	return a, ok
}

func (v kernelView) u32(name string) uint64 {
	v.t.Helper()
	a, ok := v.get(name)
	if !ok || len(a.data) != 4 {
		v.t.Fatalf("%s: present %v, %d bytes; want a u32", name, ok, len(a.data))
	}
	return uint64(binary.NativeEndian.Uint32(a.data))
}

func (v kernelView) u64(name string) uint64 {
	v.t.Helper()
	a, ok := v.get(name)
	if !ok || len(a.data) != 8 {
		v.t.Fatalf("%s: present %v, %d bytes; want a u64", name, ok, len(a.data))
	}
	return binary.NativeEndian.Uint64(a.data)
}

func (v kernelView) str(name string) string {
	v.t.Helper()
	a, ok := v.get(name)
	if !ok || len(a.data) == 0 || a.data[len(a.data)-1] != 0 {
		v.t.Fatalf("%s: present %v, %q; want a NUL-terminated string", name, ok, a.data)
	}
	return string(a.data[:len(a.data)-1])
}

func (v kernelView) absent(names ...string) {
	v.t.Helper()
	for _, n := range names {
		if _, ok := v.get(n); ok {
			v.t.Errorf("%s is in the message; it must not be", n)
		}
	}
}

// only checks that the message has exactly the attributes names.
func (v kernelView) only(names ...string) {
	v.t.Helper()
	if len(v.attrs) != len(names) {
		v.t.Errorf("%d attributes, want %d (%s)", len(v.attrs), len(names), strings.Join(names, ", "))
	}
	for _, n := range names {
		if _, ok := v.get(n); !ok {
			v.t.Errorf("%s is missing", n)
		}
	}
}

// sockets decodes NBD_ATTR_SOCKETS as nbd_genl_connect walks it: nested
// NBD_SOCK_ITEMs, each with an NBD_SOCK_FD u32.
func (v kernelView) sockets() []uint32 {
	v.t.Helper()
	a, ok := v.get("NBD_ATTR_SOCKETS")
	if !ok || !a.nested {
		v.t.Fatalf("NBD_ATTR_SOCKETS: present %v, nested %v", ok, a.nested)
	}
	var fds []uint32
	items, err := netlink.UnmarshalAttributes(a.data)
	if err != nil {
		v.t.Fatal(err)
	}
	for _, it := range items {
		if uint64(it.Type&^netlink.Nested) != v.h["NBD_SOCK_ITEM"] {
			v.t.Fatalf("an item of type %d in NBD_ATTR_SOCKETS, want NBD_SOCK_ITEM", it.Type)
		}
		inner := decode(v.t, it.Data)
		fd, ok := inner[uint16(v.h["NBD_SOCK_FD"])]
		if !ok || len(fd.data) != 4 || len(inner) != 1 {
			v.t.Fatalf("NBD_SOCK_ITEM %+v: want exactly a u32 NBD_SOCK_FD", inner)
		}
		fds = append(fds, binary.NativeEndian.Uint32(fd.data))
	}
	return fds
}

func exportFlags(t *testing.T, exp nbd.Export) uint16 {
	t.Helper()
	exp.Device = blocktest.NewMemory(1 << 20)
	f, err := exp.Flags()
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestConnectMessage(t *testing.T) {
	flags := exportFlags(t, nbd.Export{Name: "d@s", ReadOnly: true, MultiConn: true})
	cfg := Config{Index: 3, Size: 64 << 20, BlockSize: 512, Flags: flags,
		Timeout: 30 * time.Second, DeadConnTimeout: 90*time.Second + time.Nanosecond, Backend: "cairn:d@s:42"}
	m, err := connectMessage(cfg, []int{7, 9})
	if err != nil {
		t.Fatal(err)
	}
	v := view(t, m, "NBD_CMD_CONNECT")
	v.only("NBD_ATTR_INDEX", "NBD_ATTR_SIZE_BYTES", "NBD_ATTR_BLOCK_SIZE_BYTES", "NBD_ATTR_SERVER_FLAGS",
		"NBD_ATTR_TIMEOUT", "NBD_ATTR_DEAD_CONN_TIMEOUT", "NBD_ATTR_CLIENT_FLAGS", "NBD_ATTR_BACKEND_IDENTIFIER", "NBD_ATTR_SOCKETS")
	for _, c := range []struct {
		name      string
		got, want uint64
	}{
		{"NBD_ATTR_INDEX", v.u32("NBD_ATTR_INDEX"), 3},
		{"NBD_ATTR_SIZE_BYTES", v.u64("NBD_ATTR_SIZE_BYTES"), 64 << 20},
		{"NBD_ATTR_BLOCK_SIZE_BYTES", v.u64("NBD_ATTR_BLOCK_SIZE_BYTES"), 512},
		{"NBD_ATTR_SERVER_FLAGS", v.u64("NBD_ATTR_SERVER_FLAGS"), uint64(flags)},
		{"NBD_ATTR_TIMEOUT (s)", v.u64("NBD_ATTR_TIMEOUT"), 30},
		{"NBD_ATTR_DEAD_CONN_TIMEOUT (s, rounded up)", v.u64("NBD_ATTR_DEAD_CONN_TIMEOUT"), 91},
		{"NBD_ATTR_CLIENT_FLAGS", v.u64("NBD_ATTR_CLIENT_FLAGS"), 0},
	} {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if got := v.str("NBD_ATTR_BACKEND_IDENTIFIER"); got != "cairn:d@s:42" {
		t.Errorf("NBD_ATTR_BACKEND_IDENTIFIER = %q", got)
	}
	if fds := v.sockets(); len(fds) != 2 || fds[0] != 7 || fds[1] != 9 {
		t.Errorf("sockets %v, want [7 9]", fds)
	}
	// The snapshot's export is read-only to the kernel, and multi-conn.
	sf := v.u64("NBD_ATTR_SERVER_FLAGS")
	if sf&v.h["NBD_FLAG_READ_ONLY"] == 0 || sf&v.h["NBD_FLAG_CAN_MULTI_CONN"] == 0 || sf&v.h["NBD_FLAG_SEND_TRIM"] != 0 {
		t.Errorf("server flags %#x of a read-only multi-conn export", sf)
	}
	if !cfg.ReadOnly() {
		t.Error("Config.ReadOnly() is false for a read-only export")
	}

	// A writable export: flush, FUA and trim reach the kernel.
	rw := exportFlags(t, nbd.Export{Name: "d", MultiConn: true})
	m, err = connectMessage(Config{Index: 0, Size: 1 << 20, Flags: rw}, []int{5})
	if err != nil {
		t.Fatal(err)
	}
	v = view(t, m, "NBD_CMD_CONNECT")
	v.absent("NBD_ATTR_BLOCK_SIZE_BYTES", "NBD_ATTR_TIMEOUT", "NBD_ATTR_DEAD_CONN_TIMEOUT", "NBD_ATTR_BACKEND_IDENTIFIER")
	sf = v.u64("NBD_ATTR_SERVER_FLAGS")
	for _, f := range []string{"NBD_FLAG_SEND_FLUSH", "NBD_FLAG_SEND_FUA", "NBD_FLAG_SEND_TRIM", "NBD_FLAG_CAN_MULTI_CONN"} {
		if sf&v.h[f] == 0 {
			t.Errorf("server flags %#x of a writable export lack %s", sf, f)
		}
	}
	if sf&v.h["NBD_FLAG_READ_ONLY"] != 0 {
		t.Errorf("server flags %#x of a writable export say read-only", sf)
	}
}

func TestConnectMessageRefusals(t *testing.T) {
	rw := exportFlags(t, nbd.Export{Name: "d", MultiConn: true})
	single := exportFlags(t, nbd.Export{Name: "d"})
	for _, c := range []struct {
		name  string
		cfg   Config
		socks []int
	}{
		{"no socket", Config{Size: 1 << 20, Flags: rw}, nil},
		{"two sockets without CAN_MULTI_CONN", Config{Size: 1 << 20, Flags: single}, []int{3, 4}},
		{"negative index", Config{Index: -1, Size: 1 << 20, Flags: rw}, []int{3}},
		{"no size", Config{Flags: rw}, []int{3}},
		{"block size 1000", Config{Size: 1 << 20, BlockSize: 1000, Flags: rw}, []int{3}},
		{"block size 8192", Config{Size: 1 << 20, BlockSize: 8192, Flags: rw}, []int{3}},
		{"negative timeout", Config{Size: 1 << 20, Flags: rw, Timeout: -1}, []int{3}},
	} {
		if _, err := connectMessage(c.cfg, c.socks); err == nil {
			t.Errorf("%s: no error", c.name)
		}
	}
}

func TestReconfigureMessage(t *testing.T) {
	m, err := reconfigureMessage(Config{Index: 12, Size: 1 << 20, Flags: 1, Timeout: 30 * time.Second,
		DeadConnTimeout: 2 * time.Minute, Backend: "cairn:x"}, []int{11, 12, 13})
	if err != nil {
		t.Fatal(err)
	}
	v := view(t, m, "NBD_CMD_RECONFIGURE")
	// The size and flags are CONNECT's; RECONFIGURE does not carry them.
	v.only("NBD_ATTR_INDEX", "NBD_ATTR_TIMEOUT", "NBD_ATTR_DEAD_CONN_TIMEOUT", "NBD_ATTR_CLIENT_FLAGS",
		"NBD_ATTR_BACKEND_IDENTIFIER", "NBD_ATTR_SOCKETS")
	if v.u32("NBD_ATTR_INDEX") != 12 || v.u64("NBD_ATTR_TIMEOUT") != 30 || v.u64("NBD_ATTR_DEAD_CONN_TIMEOUT") != 120 ||
		v.u64("NBD_ATTR_CLIENT_FLAGS") != 0 || v.str("NBD_ATTR_BACKEND_IDENTIFIER") != "cairn:x" {
		t.Errorf("attributes %+v", v.attrs)
	}
	if fds := v.sockets(); len(fds) != 3 || fds[0] != 11 || fds[2] != 13 {
		t.Errorf("sockets %v, want [11 12 13]", fds)
	}
}

func TestDisconnectAndStatusMessages(t *testing.T) {
	m, err := disconnectMessage(5)
	if err != nil {
		t.Fatal(err)
	}
	v := view(t, m, "NBD_CMD_DISCONNECT")
	v.only("NBD_ATTR_INDEX")
	if v.u32("NBD_ATTR_INDEX") != 5 {
		t.Errorf("NBD_ATTR_INDEX = %d", v.u32("NBD_ATTR_INDEX"))
	}
	if _, err := disconnectMessage(-1); err == nil {
		t.Error("disconnect of device -1: no error")
	}

	m, _ = statusMessage(2)
	v = view(t, m, "NBD_CMD_STATUS")
	v.only("NBD_ATTR_INDEX")
	if v.u32("NBD_ATTR_INDEX") != 2 {
		t.Errorf("NBD_ATTR_INDEX = %d", v.u32("NBD_ATTR_INDEX"))
	}
	m, _ = statusMessage(-1)
	view(t, m, "NBD_CMD_STATUS").only() // every device
}

// TestParseReplies decodes answers built as drivers/block/nbd.c builds
// them (nbd_connect_reply, populate_nbd_status), with the headers'
// numbers.
func TestParseReplies(t *testing.T) {
	h := uapi(t, "nbd-netlink.h", "nbd.h")
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(uint16(h["NBD_ATTR_INDEX"]), 7)
	b, _ := ae.Encode()
	index, err := parseIndex([]genetlink.Message{{Data: b}})
	if err != nil || index != 7 {
		t.Errorf("parseIndex = %d, %v; want 7", index, err)
	}
	if _, err := parseIndex([]genetlink.Message{{}}); err == nil {
		t.Error("parseIndex of an empty reply: no error")
	}

	ae = netlink.NewAttributeEncoder()
	ae.Nested(uint16(h["NBD_ATTR_DEVICE_LIST"]), func(list *netlink.AttributeEncoder) error {
		for _, d := range []struct {
			index     uint32
			connected uint8
		}{{0, 1}, {1, 0}, {15, 1}} {
			list.Nested(uint16(h["NBD_DEVICE_ITEM"]), func(item *netlink.AttributeEncoder) error {
				item.Uint32(uint16(h["NBD_DEVICE_INDEX"]), d.index)
				item.Uint8(uint16(h["NBD_DEVICE_CONNECTED"]), d.connected)
				return nil
			})
		}
		return nil
	})
	b, _ = ae.Encode()
	got, err := parseStatus([]genetlink.Message{{Data: b}})
	want := []Status{{0, true}, {1, false}, {15, true}}
	if err != nil || len(got) != len(want) {
		t.Fatalf("parseStatus = %+v, %v; want %+v", got, err, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("device %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}
