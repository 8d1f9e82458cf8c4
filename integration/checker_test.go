package integration

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// A history is what clients saw of the cache, checked for
// linearizability per key: a register with put, get and compare-and-set on
// the old value. Writes whose outcome is unknown (a timeout, an error, a
// node that died mid-request) may have taken effect at any time after they
// were invoked; reads that failed had no effect and are left out.

// kvInput is one operation sent to the cluster.
type kvInput struct {
	Op    string `json:"op"` // get, put, cas
	Key   string `json:"key"`
	Value string `json:"value,omitempty"` // put, cas: the new value
	Old   string `json:"old,omitempty"`   // cas: the expected value
}

// kvOutput is what the cluster answered.
type kvOutput struct {
	Value   string `json:"value,omitempty"` // get: "" when absent
	OK      bool   `json:"ok,omitempty"`    // cas: applied
	Unknown bool   `json:"unknown,omitempty"`
}

// histOp is one operation of a history, with times in ns since the start.
type histOp struct {
	Client int      `json:"client"`
	Input  kvInput  `json:"input"`
	Output kvOutput `json:"output"`
	Call   int64    `json:"call"`
	Return int64    `json:"return"` // math.MaxInt64 when the outcome is unknown
	Node   string   `json:"node"`
	Error  string   `json:"error,omitempty"`
}

var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).Key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.Op {
		case "get":
			return out.Value == st, st
		case "put":
			return true, in.Value
		case "cas":
			applies := st == in.Old && st != ""
			switch {
			case out.Unknown:
				if applies {
					return true, in.Value
				}
				return true, st
			case out.OK:
				return applies, in.Value
			default:
				return !applies, st
			}
		}
		return false, st
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		switch in.Op {
		case "get":
			return fmt.Sprintf("get(%s) -> %q", in.Key, out.Value)
		case "put":
			return fmt.Sprintf("put(%s, %q)", in.Key, in.Value)
		}
		return fmt.Sprintf("cas(%s, %q -> %q) -> %v", in.Key, in.Old, in.Value, out.OK)
	},
}

// checkLinearizable checks history with porcupine, giving it timeout.
func checkLinearizable(history []histOp, timeout time.Duration) porcupine.CheckResult {
	ops := make([]porcupine.Operation, 0, len(history))
	for _, h := range history {
		ops = append(ops, porcupine.Operation{ClientId: h.Client, Input: h.Input, Output: h.Output, Call: h.Call, Return: h.Return})
	}
	return porcupine.CheckOperationsTimeout(kvModel, ops, timeout)
}

// writeHistory saves history as JSON lines for later examination.
func writeHistory(path string, history []histOp) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	enc := json.NewEncoder(f)
	for _, h := range history {
		if err := enc.Encode(h); err != nil {
			return err
		}
	}
	return nil
}

const never = math.MaxInt64

func op(client int, in kvInput, out kvOutput, call, ret int64) histOp {
	return histOp{Client: client, Input: in, Output: out, Call: call, Return: ret}
}

func put(k, v string) kvInput      { return kvInput{Op: "put", Key: k, Value: v} }
func get(k string) kvInput         { return kvInput{Op: "get", Key: k} }
func cas(k, old, v string) kvInput { return kvInput{Op: "cas", Key: k, Old: old, Value: v} }
func saw(v string) kvOutput        { return kvOutput{Value: v} }

// The checker accepts what a linearizable cache may do and rejects a lost
// acknowledged write and a stale read (acceptance 6.3).
func TestCheckerCatchesBugs(t *testing.T) {
	cases := []struct {
		name    string
		history []histOp
		want    porcupine.CheckResult
	}{
		{"sequential", []histOp{
			op(0, put("x", "1"), kvOutput{}, 0, 10),
			op(1, get("x"), saw("1"), 20, 30),
			op(0, cas("x", "1", "2"), kvOutput{OK: true}, 40, 50),
			op(1, get("x"), saw("2"), 60, 70),
		}, porcupine.Ok},
		{"concurrent read may see either value", []histOp{
			op(0, put("x", "1"), kvOutput{}, 0, 10),
			op(0, put("x", "2"), kvOutput{}, 20, 50),
			op(1, get("x"), saw("1"), 30, 40),
		}, porcupine.Ok},
		{"unknown write may take effect later", []histOp{
			op(0, put("x", "1"), kvOutput{Unknown: true}, 0, never),
			op(1, get("x"), saw(""), 10, 20),
			op(1, get("x"), saw("1"), 30, 40),
		}, porcupine.Ok},
		{"unknown write may never take effect", []histOp{
			op(0, put("x", "1"), kvOutput{Unknown: true}, 0, never),
			op(1, get("x"), saw(""), 10, 20),
		}, porcupine.Ok},
		{"lost acknowledged write", []histOp{
			op(0, put("x", "1"), kvOutput{}, 0, 10),
			op(1, get("x"), saw("1"), 20, 30),
			op(0, put("y", "a"), kvOutput{}, 40, 50), // acknowledged...
			op(1, get("y"), saw(""), 60, 70),         // ...and gone
		}, porcupine.Illegal},
		{"stale read", []histOp{
			op(0, put("x", "1"), kvOutput{}, 0, 10),
			op(0, put("x", "2"), kvOutput{}, 20, 30),
			op(1, get("x"), saw("1"), 40, 50), // after 2 was acknowledged
		}, porcupine.Illegal},
		{"cas both succeed from one value", []histOp{
			op(0, put("x", "0"), kvOutput{}, 0, 10),
			op(1, cas("x", "0", "1"), kvOutput{OK: true}, 20, 40),
			op(2, cas("x", "0", "2"), kvOutput{OK: true}, 20, 40),
		}, porcupine.Illegal},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := checkLinearizable(tc.history, 10*time.Second); got != tc.want {
				t.Fatalf("checker said %s, want %s", got, tc.want)
			}
		})
	}
}
