// composecheck loads a Compose file the way `docker compose config` does (compose-go: the
// Compose Specification's JSON Schema, interpolation, normalisation, consistency of references)
// and prints the resolved model as JSON, so CI can validate docker-compose.yml without a Docker
// engine. Usage: composecheck [-profile NAME]... FILE > resolved.json
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/compose-spec/compose-go/v2/cli"
)

type profiles []string

func (p *profiles) String() string     { return strings.Join(*p, ",") }
func (p *profiles) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	var active profiles
	flag.Var(&active, "profile", "profile to enable (repeatable; \"*\" enables all)")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: composecheck [-profile NAME]... FILE")
		os.Exit(2)
	}
	options, err := cli.NewProjectOptions(
		[]string{flag.Arg(0)},
		cli.WithOsEnv,
		cli.WithDotEnv,
		cli.WithProfiles(active),
		cli.WithConsistency(true),
		cli.WithResolvedPaths(false),
	)
	if err != nil {
		fail(err)
	}
	project, err := options.LoadProject(context.Background())
	if err != nil {
		fail(err)
	}
	resolved, err := project.MarshalJSON()
	if err != nil {
		fail(err)
	}
	fmt.Println(string(resolved))
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "compose file invalid: %v\n", err)
	os.Exit(1)
}
