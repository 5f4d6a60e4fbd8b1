package daemon

// NameRule is the rule every disk name follows, as error messages state it.
// Names never reach a filesystem path (live images are named by the disk's
// numeric id), and '@' is left free to separate DISK@SNAPSHOT exports.
const NameRule = "1 to 64 characters from a-z A-Z 0-9 . _ -, not starting with '.' or '-'"

// ValidName reports whether name follows NameRule.
func ValidName(name string) bool {
	if len(name) == 0 || len(name) > 64 || name[0] == '.' || name[0] == '-' {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

func checkName(field, name string) error {
	if !ValidName(name) {
		return invalidf("%s %q: a name is %s", field, name, NameRule)
	}
	return nil
}
