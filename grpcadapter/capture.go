package grpcadapter

import (
	"context"
	"fmt"
	"sync"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/idemkit/idem"
)

// response is what the server interceptor stores and replays: the outcome
// of a call, as the client received it. Its fields are exported for the
// codec.
type response struct {
	// Method is the full name of the method that stored it.
	Method string
	// Type is the full name of the response message, and Body its wire
	// encoding; both are empty when Status is set.
	Type string
	Body []byte
	// Status is the wire encoding of the google.rpc.Status of a final
	// error (see WithFinalStatus).
	Status []byte
	// Header and Trailer are the metadata the handler set.
	Header  map[string][]string
	Trailer map[string][]string
}

// outcome returns the message or the error that resp holds.
func (resp *response) outcome() (proto.Message, error) {
	if resp.Status != nil {
		st := new(spb.Status)
		if err := proto.Unmarshal(resp.Status, st); err != nil {
			return nil, fmt.Errorf("%w: stored status: %w", idem.ErrCorruptRecord, err)
		}
		if codes.Code(st.Code) == codes.OK {
			return nil, fmt.Errorf("%w: stored status has code OK", idem.ErrCorruptRecord)
		}
		return nil, status.ErrorProto(st)
	}
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(resp.Type))
	if err != nil {
		return nil, fmt.Errorf("%w: stored response type %q is not registered in protoregistry.GlobalTypes "+
			"(is its package linked into this binary?); every replay of this key fails until the record expires: %w",
			idem.ErrCorruptRecord, resp.Type, err)
	}
	m := mt.New().Interface()
	if err := proto.Unmarshal(resp.Body, m); err != nil {
		return nil, fmt.Errorf("%w: stored %s: %w", idem.ErrCorruptRecord, resp.Type, err)
	}
	return m, nil
}

// capture is the ServerTransportStream a protected handler sees. It records
// the header and trailer metadata the handler sets, and passes them on to
// the call's stream.
//
// The header is sent with the response, or with the status, after the
// interceptor added its own metadata to it: SendHeader only marks it as
// sent, so that later calls of SetHeader fail, as they do on the call's
// stream. For a unary call, a client sees no difference.
type capture struct {
	grpc.ServerTransportStream // the call's stream

	mu      sync.Mutex
	header  metadata.MD
	trailer metadata.MD
	sent    bool
}

// errHeaderSent is what SetHeader and SendHeader return once SendHeader was
// called, as the call's stream would.
var errHeaderSent = status.Error(codes.Internal, "grpcadapter: header already sent")

// SetHeader implements grpc.ServerTransportStream.
func (c *capture) SetHeader(md metadata.MD) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sent {
		return errHeaderSent
	}
	return c.setHeader(md)
}

func (c *capture) setHeader(md metadata.MD) error {
	if err := c.ServerTransportStream.SetHeader(md); err != nil {
		return err
	}
	c.header = join(c.header, md)
	return nil
}

// SendHeader implements grpc.ServerTransportStream.
func (c *capture) SendHeader(md metadata.MD) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sent {
		return errHeaderSent
	}
	if err := c.setHeader(md); err != nil {
		return err
	}
	c.sent = true
	return nil
}

// SetTrailer implements grpc.ServerTransportStream.
func (c *capture) SetTrailer(md metadata.MD) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ServerTransportStream.SetTrailer(md); err != nil {
		return err
	}
	c.trailer = join(c.trailer, md)
	return nil
}

// recorded returns copies of the metadata recorded so far.
func (c *capture) recorded() (header, trailer map[string][]string) {
	if c == nil {
		return nil, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return join(nil, c.header), join(nil, c.trailer)
}

// join returns md with the pairs of add appended, copied. It allocates
// only when add is not empty.
func join(md, add metadata.MD) metadata.MD {
	for k, vs := range add {
		if len(vs) == 0 {
			continue
		}
		if md == nil {
			md = make(metadata.MD, len(add))
		}
		md[k] = append(md[k], vs...)
	}
	return md
}

// withCapture returns ctx with a capture of its stream installed, and the
// capture; or ctx and nil when ctx has no stream (the interceptor was called
// outside a gRPC server).
func withCapture(ctx context.Context) (context.Context, *capture) {
	stream := grpc.ServerTransportStreamFromContext(ctx)
	if stream == nil {
		return ctx, nil
	}
	c := &capture{ServerTransportStream: stream}
	return grpc.NewContextWithServerTransportStream(ctx, c), c
}
