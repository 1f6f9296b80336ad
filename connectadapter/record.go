package connectadapter

import (
	"errors"
	"fmt"
	"strings"

	"connectrpc.com/connect"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/idemkit/idem"
)

// response is what the server interceptor stores and replays: the outcome
// of a call, as the client received it. Its fields are exported for the
// codec.
type response struct {
	// Procedure is the name of the procedure that stored it.
	Procedure string
	// Type is the full name of the response message, and Body its wire
	// encoding; both are empty when Error is set.
	Type string
	Body []byte
	// Error is the wire encoding, as a google.rpc.Status, of a recorded
	// error (see WithDisposition): its code, message and details. Meta is
	// its metadata.
	Error []byte
	Meta  map[string][]string
	// Header and Trailer are the response header and trailer the handler
	// set, on the connect.Response or through connect.CallInfo.
	Header  map[string][]string
	Trailer map[string][]string
}

// Replayed is the message of a replayed response, as interceptors wrapped
// outside the server interceptor see it in connect.AnyResponse.Any: a
// proto.Message that carries the stored message, of the handler's response
// type (decoded through protoregistry.GlobalTypes). It is not the handler's
// Go type, which the interceptor cannot name when no handler ran: code that
// inspects responses should use proto.Message, or this type's Message.
// Connect's protobuf binary and JSON codecs encode it as the message it
// carries; so do codecs that work through proto.Message.
type Replayed struct {
	proto.Message
}

// outcome returns the response or the error that resp holds, for a call
// with spec.
func (resp *response) outcome(spec connect.Spec) (connect.AnyResponse, error) {
	if resp.Error != nil {
		return nil, resp.err()
	}
	mt, err := messageType(protoreflect.FullName(resp.Type), spec)
	if err != nil {
		return nil, err
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(resp.Body, m); err != nil {
		return nil, fmt.Errorf("%w: stored %s: %w", idem.ErrCorruptRecord, resp.Type, err)
	}
	r := connect.NewResponse(&Replayed{Message: m})
	setAll(r.Header(), resp.Header)
	setAll(r.Trailer(), resp.Trailer)
	return r, nil
}

// messageType finds the type named name: in protoregistry.GlobalTypes, or
// else, as a dynamic message, in the schema of the procedure when it is a
// method descriptor (as with generated code).
func messageType(name protoreflect.FullName, spec connect.Spec) (protoreflect.MessageType, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
	if err == nil {
		return mt, nil
	}
	if md, ok := spec.Schema.(protoreflect.MethodDescriptor); ok && md.Output().FullName() == name {
		return dynamicpb.NewMessageType(md.Output()), nil
	}
	return nil, fmt.Errorf("%w: stored response type %q is not registered in protoregistry.GlobalTypes "+
		"(is its package linked into this binary?); every replay of this key fails until the record expires: %w",
		idem.ErrCorruptRecord, name, err)
}

// err returns the recorded error.
func (resp *response) err() error {
	st := new(spb.Status)
	if err := proto.Unmarshal(resp.Error, st); err != nil {
		return fmt.Errorf("%w: stored error: %w", idem.ErrCorruptRecord, err)
	}
	code := connect.Code(st.GetCode())
	if code < connect.CodeCanceled || code > connect.CodeUnauthenticated {
		return fmt.Errorf("%w: stored error has code %d", idem.ErrCorruptRecord, st.GetCode())
	}
	ce := connect.NewError(code, errors.New(st.GetMessage()))
	for _, a := range st.GetDetails() {
		d, err := connect.NewErrorDetail(a)
		if err != nil {
			return fmt.Errorf("%w: stored error detail: %w", idem.ErrCorruptRecord, err)
		}
		ce.AddDetail(d)
	}
	setAll(ce.Meta(), resp.Meta)
	setAll(ce.Meta(), resp.Header)
	setAll(ce.Meta(), resp.Trailer)
	return ce
}

// encodeError returns the wire encoding of ce as a google.rpc.Status.
func encodeError(ce *connect.Error) ([]byte, error) {
	st := &spb.Status{Code: int32(ce.Code()), Message: ce.Message()}
	for _, d := range ce.Details() {
		st.Details = append(st.Details, &anypb.Any{TypeUrl: typeURL(d.Type()), Value: d.Bytes()})
	}
	b, err := proto.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("connectadapter: encoding error: %w", err)
	}
	return b, nil
}

func typeURL(name string) string {
	if strings.Contains(name, "/") {
		return name
	}
	return "type.googleapis.com/" + name
}
