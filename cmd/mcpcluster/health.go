package main

import (
	"fmt"
	"io"
	"net/http"
)

// runHealth is `mcpcluster health`: exit 0 when the node's /readyz says
// ready, 1 otherwise with the reason. Container images have no shell or
// curl; their health checks call this.
func runHealth(args []string, stdout, stderr io.Writer) error {
	c, err := parseClientFlags("health", args, stderr)
	if err != nil {
		return err
	}
	body, err := c.call(http.MethodGet, "/readyz")
	if err != nil {
		return err
	}
	if c.json {
		_, err = stdout.Write(body)
		return err
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}
