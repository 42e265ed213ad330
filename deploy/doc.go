// Package deploy holds example deployment files; its tests parse them strictly into the real Kubernetes and Compose types.
package deploy
