//go:build !linux

package main

import (
	"errors"
	"io"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
)

// errInterceptNeedsLinux is what every intercept subcommand fails with here.
var errInterceptNeedsLinux = errors.New("transparent interception needs Linux (nftables, TPROXY, SO_ORIGINAL_DST)")

func interceptInstall(cfg *config.Intercept, out io.Writer) error { return errInterceptNeedsLinux }

func interceptRemove(cfg *config.Intercept, out io.Writer) error { return errInterceptNeedsLinux }

func interceptShow(cfg *config.Intercept, out io.Writer) error { return errInterceptNeedsLinux }
