//go:build !linux

package main

import (
	"errors"
	"io"
)

// errInterceptNeedsLinux is what every intercept subcommand fails with here.
var errInterceptNeedsLinux = errors.New("transparent interception needs Linux (nftables, TPROXY, SO_ORIGINAL_DST)")

func interceptInstall(cfg *interceptConfig, out io.Writer) error { return errInterceptNeedsLinux }

func interceptRemove(cfg *interceptConfig, out io.Writer) error { return errInterceptNeedsLinux }

func interceptShow(cfg *interceptConfig, out io.Writer) error { return errInterceptNeedsLinux }
