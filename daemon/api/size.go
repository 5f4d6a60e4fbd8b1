package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
)

// Size is a byte count as a client writes it: in JSON either a number of
// bytes (1073741824) or a string with a binary unit ("1G", "512M", "64K",
// "1T"; K, M, G and T are KiB, MiB, GiB and TiB; "KiB", "MB" and a "B"
// suffix are accepted too). The daemon parses it with ParseSize so that an
// error can name the field it came from.
type Size string

// UnmarshalJSON accepts a JSON number or string and keeps its text.
func (s *Size) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case len(b) > 0 && b[0] == '"':
		var str string
		if err := json.Unmarshal(b, &str); err != nil {
			return err
		}
		*s = Size(str)
	case len(b) > 0 && (b[0] == '-' || b[0] >= '0' && b[0] <= '9'):
		*s = Size(b)
	case string(b) == "null":
		*s = ""
	default:
		// The decoder fills in the field name of an UnmarshalTypeError.
		return &json.UnmarshalTypeError{Value: jsonKind(b), Type: reflect.TypeFor[Size]()}
	}
	return nil
}

// MarshalJSON writes a plain byte count as a number and anything else as a
// string.
func (s Size) MarshalJSON() ([]byte, error) {
	if _, err := strconv.ParseInt(string(s), 10, 64); err == nil {
		return []byte(s), nil
	}
	return json.Marshal(string(s))
}

func jsonKind(b []byte) string {
	switch {
	case len(b) == 0:
		return "nothing"
	case b[0] == '{':
		return "object"
	case b[0] == '[':
		return "array"
	case b[0] == 't' || b[0] == 'f':
		return "bool"
	}
	return "value"
}

// Bytes is a Size of n bytes.
func Bytes(n int64) Size { return Size(strconv.FormatInt(n, 10)) }

var units = []struct {
	suffix string
	shift  uint
}{
	{"TIB", 40}, {"GIB", 30}, {"MIB", 20}, {"KIB", 10},
	{"TB", 40}, {"GB", 30}, {"MB", 20}, {"KB", 10},
	{"T", 40}, {"G", 30}, {"M", 20}, {"K", 10},
	{"B", 0},
}

// ParseSize parses a size such as "10G", "512M", "1.5T", "64K" or "4096".
// Units are binary (K = 1024). Fractions are allowed when the result is a
// whole number of bytes. The result is at least 1.
func ParseSize(s string) (int64, error) {
	text := strings.TrimSpace(s)
	if text == "" {
		return 0, fmt.Errorf("size is empty: give a number of bytes or a number with a unit (K, M, G, T), such as 10G")
	}
	num, shift := strings.ToUpper(text), uint(0)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, shift = strings.TrimSpace(num[:len(num)-len(u.suffix)]), u.shift
			break
		}
	}
	bad := fmt.Errorf("invalid size %q: give a number of bytes or a number with a unit (K, M, G, T = KiB, MiB, GiB, TiB), such as 10G", s)
	if num == "" || strings.Trim(num, "0123456789.") != "" || strings.Count(num, ".") > 1 {
		return 0, bad
	}
	if n, err := strconv.ParseUint(num, 10, 63); err == nil {
		if n > math.MaxInt64>>shift {
			return 0, fmt.Errorf("size %q is too large", s)
		}
		if n == 0 {
			return 0, fmt.Errorf("size %q is zero: a size must be at least one byte", s)
		}
		return int64(n) << shift, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, bad
	}
	v := f * float64(uint64(1)<<shift)
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("size %q is not a whole number of bytes", s)
	}
	if v < 1 {
		return 0, fmt.Errorf("size %q is zero: a size must be at least one byte", s)
	}
	return int64(v), nil
}

// FormatSize writes n bytes in the largest binary unit that keeps at least
// one whole unit: "10 GiB", "1.5 TiB", "512 B". Up to two decimals; exact
// sizes print without decimals.
func FormatSize(n int64) string {
	names := []string{"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	i := 0
	for i < len(names)-1 && n >= int64(1)<<(10*(i+1)) {
		i++
	}
	if i == 0 {
		return fmt.Sprintf("%d B", n)
	}
	v := float64(n) / float64(int64(1)<<(10*i))
	s := strconv.FormatFloat(v, 'f', 2, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + " " + names[i]
}
