package codec

import "fmt"

// jsonTooDeep reports whether JSON text b nests objects and arrays more
// than MaxDepth levels deep, counting them as encoding/json does (its
// decoder refuses more, with "exceeded max depth"). It does not validate b.
func jsonTooDeep(b []byte) bool {
	depth := 0
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '"':
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					i++
				}
			}
		case '[', '{':
			if depth++; depth > MaxDepth {
				return true
			}
		case ']', '}':
			depth--
		}
	}
	return false
}

// errJSONTooDeep is the error for JSON nested more than MaxDepth levels.
func errJSONTooDeep(cause error) error {
	return &tooDeepError{msg: fmt.Sprintf("codec: json: nested more than %d levels deep", MaxDepth), cause: cause}
}
