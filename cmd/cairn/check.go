package main

import "github.com/spf13/cobra"

func (a *app) checkCmd() *cobra.Command { return &cobra.Command{Use: "check", Hidden: true} }
