package httpadapter

import (
	"strings"

	"github.com/idemkit/idem"
)

// parseKey decodes the value of an Idempotency-Key header. A value that
// starts with a double quote must be a Structured Field String (RFC 9651,
// section 3.3.3): printable ASCII between quotes, where \" and \\ stand for
// " and \, and nothing after the closing quote (parameters are refused).
// Any other value is taken as it is, as Stripe's clients send it. The key it
// stands for must be 1 to idem.MaxKeyLen printable ASCII characters.
func parseKey(v string) (string, bool) {
	if !strings.HasPrefix(v, `"`) {
		return v, validKey(v)
	}
	var b []byte // the unescaped key, built only once v shows an escape
	for i := 1; i < len(v); i++ {
		switch c := v[i]; {
		case c == '"':
			if i != len(v)-1 {
				return "", false // parameters or other text follow
			}
			key := v[1:i]
			if b != nil {
				key = string(b)
			}
			return key, validKey(key)
		case c == '\\':
			if i+1 == len(v) || v[i+1] != '"' && v[i+1] != '\\' {
				return "", false
			}
			if b == nil {
				b = append(make([]byte, 0, len(v)), v[1:i]...)
			}
			i++
			b = append(b, v[i])
		case b != nil:
			b = append(b, c)
		}
	}
	return "", false // unterminated
}

func validKey(k string) bool {
	return len(k) > 0 && len(k) <= idem.MaxKeyLen && printableString(k)
}

func printableString(s string) bool {
	for i := 0; i < len(s); i++ {
		if !printable(s[i]) {
			return false
		}
	}
	return true
}

func printable(c byte) bool { return 0x20 <= c && c <= 0x7e }
