// Package apierrtest checks a service's table of errors and the gRPC codes
// its handlers answer them with (apierr's rule), so that each service's
// test lists only its own errors.
package apierrtest

import (
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Case is one row of the table: Err must become Code, with the message Msg
// unless Msg is empty.
type Case struct {
	Err  error
	Code codes.Code
	Msg  string
}

// Check reports every case that toStatus answers with another code or
// message.
func Check(t testing.TB, toStatus func(error) error, cases []Case) {
	t.Helper()
	for _, c := range cases {
		st, _ := status.FromError(toStatus(c.Err))
		if st.Code() != c.Code || c.Msg != "" && st.Message() != c.Msg {
			t.Errorf("%v: %v %q, want %v %q", c.Err, st.Code(), st.Message(), c.Code, c.Msg)
		}
	}
}
