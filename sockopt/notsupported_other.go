//go:build !linux

package sockopt

import "runtime"

// notSupportedError names the option and the platform while still matching
// errors.Is(err, ErrNotSupported).
type notSupportedError struct{ opt string }

func (e *notSupportedError) Error() string {
	return "sockopt: " + e.opt + ": not supported on " + runtime.GOOS
}

func (e *notSupportedError) Unwrap() error { return ErrNotSupported }

// notSupported returns the error for an option this platform lacks.
func notSupported(opt string) error { return &notSupportedError{opt: opt} }
