package api

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		err  string // substring of the error; "" means success
	}{
		{"4096", 4096, ""},
		{"1", 1, ""},
		{"10G", 10 << 30, ""},
		{"10g", 10 << 30, ""},
		{"512M", 512 << 20, ""},
		{"64K", 64 << 10, ""},
		{"1T", 1 << 40, ""},
		{"2GiB", 2 << 30, ""},
		{"2 GiB", 2 << 30, ""},
		{"2GB", 2 << 30, ""},
		{"100B", 100, ""},
		{" 8M ", 8 << 20, ""},
		{"1.5G", 3 << 29, ""},
		{"0.5K", 512, ""},
		{"", 0, "empty"},
		{"0", 0, "zero"},
		{"0G", 0, "zero"},
		{"-1", 0, "invalid size"},
		{"-1G", 0, "invalid size"},
		{"+5", 0, "invalid size"},
		{"G", 0, "invalid size"},
		{"10X", 0, "invalid size"},
		{"ten", 0, "invalid size"},
		{"1e9", 0, "invalid size"},
		{"0x1000", 0, "invalid size"},
		{"1_000", 0, "invalid size"},
		{"1.0000001K", 0, "whole number"},
		{"0.1", 0, "whole number"},
		{"9223372036854775808", 0, "too large"},
		{"8388607T", 8388607 << 40, ""},
		{"8388608T", 0, "too large"},
		{"1.2.3", 0, "invalid size"},
		{".", 0, "invalid size"},
		{"99999999999T", 0, "too large"},
		{"NaN", 0, "invalid size"},
		{"Inf", 0, "invalid size"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseSize(tc.in)
			if tc.err == "" {
				if err != nil || got != tc.want {
					t.Fatalf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("ParseSize(%q) = %d, %v; want an error containing %q", tc.in, got, err, tc.err)
			}
		})
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0 B"},
		{512, "512 B"},
		{1023, "1023 B"},
		{1024, "1 KiB"},
		{64 << 10, "64 KiB"},
		{1536, "1.5 KiB"},
		{10 << 30, "10 GiB"},
		{1<<40 + 1<<39, "1.5 TiB"},
		{1<<30 + 1, "1 GiB"},
		{1<<30 + 1<<30/100*33, "1.33 GiB"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestSizeJSON(t *testing.T) {
	var req GrowDiskRequest
	for _, tc := range []struct {
		in, want string
	}{
		{`{"size":"10G"}`, "10G"},
		{`{"size":4096}`, "4096"},
		{`{"size":null}`, ""},
	} {
		if err := json.Unmarshal([]byte(tc.in), &req); err != nil || string(req.Size) != tc.want {
			t.Errorf("%s: %q, %v", tc.in, req.Size, err)
		}
	}
	err := json.Unmarshal([]byte(`{"size":[1]}`), &req)
	var typ *json.UnmarshalTypeError
	if !errorsAs(err, &typ) || typ.Field != "size" || typ.Value != "array" {
		t.Errorf("array size: %v", err)
	}
	for size, want := range map[Size]string{"4096": `{"size":4096}`, "10G": `{"size":"10G"}`, Bytes(1 << 20): `{"size":1048576}`} {
		b, err := json.Marshal(GrowDiskRequest{Size: size})
		if err != nil || string(b) != want {
			t.Errorf("marshal %q: %s, %v", size, b, err)
		}
	}
}

func errorsAs(err error, target **json.UnmarshalTypeError) bool {
	t, ok := err.(*json.UnmarshalTypeError)
	*target = t
	return ok
}
