package codec

// Internals for the tests of package codec_test.

// Guard runs the walk that MsgPack.Marshal runs before encoding v.
func Guard(v any) error {
	_, err := msgpackDialect.check(v)
	return err
}

// GuardJSON runs the walk that JSON.Marshal runs before encoding v.
func GuardJSON(v any) error {
	_, err := jsonDialect.check(v)
	return err
}

// CheckMsgpack is the check both sides of MsgPack run on the bytes.
var CheckMsgpack = checkMsgpack

// ErrMsgpack is wrapped by the errors for malformed msgpack data.
var ErrMsgpack = errMsgpack
