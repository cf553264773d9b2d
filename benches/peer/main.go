// The peer of the gateway benchmark (benches/compare.sh): the open-source core of Redpanda
// Connect (github.com/redpanda-data/benthos/v4) with the one piece of Redpanda Connect that the
// job needs and the core lacks, its `kafka_franz` output, rewritten here on the same client
// (github.com/twmb/franz-go) the same way: an idempotent producer, acks=all, records keyed by an
// interpolated key, one ProduceSync per batch, `max_in_flight` batches at a time.
//
// It is built like Redpanda Connect itself (service.RunCLI), so it runs a YAML stream config:
//
//	peer -c benches/peer/peer.yaml
//
// Besides the output, it registers one bloblang function, `assign_agent(team)`: round-robin
// within a team over an agent directory, skipping offline agents and those at capacity (the
// gateway's example plugins do this through the host's `agents` and `kv` calls; bloblang has no
// mutable state, so the peer needs a plugin function for it). The directory comes from
// PEER_AGENTS: "id=team:capacity[:offline],...".
package main

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/redpanda-data/benthos/v4/public/bloblang"
	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	if err := registerAssign(os.Getenv("PEER_AGENTS")); err != nil {
		fmt.Fprintln(os.Stderr, "PEER_AGENTS:", err)
		os.Exit(2)
	}
	if err := registerKafkaFranz(); err != nil {
		panic(err)
	}
	service.RunCLI(context.Background())
}

// ---- kafka_franz output (the subset of Redpanda Connect's fields this job uses) ----

func kafkaFranzSpec() *service.ConfigSpec {
	return service.NewConfigSpec().
		Summary("Writes a batch of messages to Kafka with franz-go, as Redpanda Connect's kafka_franz output does.").
		Field(service.NewStringListField("seed_brokers")).
		Field(service.NewInterpolatedStringField("topic")).
		Field(service.NewInterpolatedStringField("key").Optional()).
		Field(service.NewStringEnumField("compression", "none", "snappy", "lz4", "gzip", "zstd").Optional()).
		Field(service.NewBoolField("idempotent_write").Default(true)).
		Field(service.NewDurationField("timeout").Default("10s")).
		Field(service.NewDurationField("linger").Optional()).
		Field(service.NewOutputMaxInFlightField().Default(10)).
		Field(service.NewBatchPolicyField("batching"))
}

type franzWriter struct {
	opts   []kgo.Opt
	topic  *service.InterpolatedString
	key    *service.InterpolatedString
	mu     sync.RWMutex
	client *kgo.Client
}

func registerKafkaFranz() error {
	return service.RegisterBatchOutput("kafka_franz", kafkaFranzSpec(),
		func(conf *service.ParsedConfig, mgr *service.Resources) (service.BatchOutput, service.BatchPolicy, int, error) {
			var policy service.BatchPolicy
			brokers, err := conf.FieldStringList("seed_brokers")
			if err != nil {
				return nil, policy, 0, err
			}
			var seeds []string
			for _, b := range brokers {
				for _, s := range strings.Split(b, ",") {
					if s = strings.TrimSpace(s); s != "" {
						seeds = append(seeds, s)
					}
				}
			}
			w := &franzWriter{}
			if w.topic, err = conf.FieldInterpolatedString("topic"); err != nil {
				return nil, policy, 0, err
			}
			if conf.Contains("key") {
				if w.key, err = conf.FieldInterpolatedString("key"); err != nil {
					return nil, policy, 0, err
				}
			}
			timeout, err := conf.FieldDuration("timeout")
			if err != nil {
				return nil, policy, 0, err
			}
			w.opts = []kgo.Opt{
				kgo.SeedBrokers(seeds...),
				kgo.ProduceRequestTimeout(timeout),
				// kafka_franz's default partitioner: murmur2 of the key, like the Java client.
				kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
			}
			idempotent, err := conf.FieldBool("idempotent_write")
			if err != nil {
				return nil, policy, 0, err
			}
			if idempotent {
				w.opts = append(w.opts, kgo.RequiredAcks(kgo.AllISRAcks()))
			} else {
				w.opts = append(w.opts, kgo.DisableIdempotentWrite())
			}
			if conf.Contains("compression") {
				c, _ := conf.FieldString("compression")
				codec := map[string]kgo.CompressionCodec{
					"none": kgo.NoCompression(), "snappy": kgo.SnappyCompression(), "lz4": kgo.Lz4Compression(),
					"gzip": kgo.GzipCompression(), "zstd": kgo.ZstdCompression(),
				}[c]
				w.opts = append(w.opts, kgo.ProducerBatchCompression(codec))
			}
			if conf.Contains("linger") {
				linger, err := conf.FieldDuration("linger")
				if err != nil {
					return nil, policy, 0, err
				}
				w.opts = append(w.opts, kgo.ProducerLinger(linger))
			}
			if policy, err = conf.FieldBatchPolicy("batching"); err != nil {
				return nil, policy, 0, err
			}
			maxInFlight, err := conf.FieldMaxInFlight()
			if err != nil {
				return nil, policy, 0, err
			}
			return w, policy, maxInFlight, nil
		})
}

func (w *franzWriter) Connect(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != nil {
		return nil
	}
	client, err := kgo.NewClient(w.opts...)
	if err != nil {
		return err
	}
	if err := client.Ping(ctx); err != nil {
		client.Close()
		return err
	}
	w.client = client
	return nil
}

func (w *franzWriter) WriteBatch(ctx context.Context, batch service.MessageBatch) error {
	w.mu.RLock()
	client := w.client
	w.mu.RUnlock()
	if client == nil {
		return service.ErrNotConnected
	}
	records := make([]*kgo.Record, 0, len(batch))
	for i, msg := range batch {
		topic, err := batch.TryInterpolatedString(i, w.topic)
		if err != nil {
			return fmt.Errorf("topic interpolation: %w", err)
		}
		value, err := msg.AsBytes()
		if err != nil {
			return err
		}
		record := &kgo.Record{Topic: topic, Value: value}
		if w.key != nil {
			if record.Key, err = batch.TryInterpolatedBytes(i, w.key); err != nil {
				return fmt.Errorf("key interpolation: %w", err)
			}
		}
		records = append(records, record)
	}
	// Answered when Kafka acknowledged every record (acks=all): only then is the
	// transaction acknowledged, and only then does http_server's sync response go out.
	return client.ProduceSync(ctx, records...).FirstErr()
}

func (w *franzWriter) Close(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.client != nil {
		w.client.Close()
		w.client = nil
	}
	return nil
}

// ---- assign_agent(team): round-robin within a team, respecting presence and capacity ----

type agent struct {
	id       string
	capacity int
	load     int
	online   bool
}

type team struct {
	mu     sync.Mutex
	agents []agent
	next   int // the `rr:<team>` entry of the example plugins
}

func parseAgents(spec string) (map[string]*team, error) {
	teams := map[string]*team{}
	for _, entry := range strings.Split(spec, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" {
			continue
		}
		id, rest, ok := strings.Cut(entry, "=")
		if !ok {
			return nil, fmt.Errorf("%q: want id=team:capacity[:offline]", entry)
		}
		parts := strings.Split(rest, ":")
		if len(parts) < 2 {
			return nil, fmt.Errorf("%q: want id=team:capacity[:offline]", entry)
		}
		capacity, err := strconv.Atoi(parts[1])
		if err != nil {
			return nil, fmt.Errorf("%q: capacity: %w", entry, err)
		}
		online := !(len(parts) > 2 && parts[2] == "offline")
		t := teams[parts[0]]
		if t == nil {
			t = &team{}
			teams[parts[0]] = t
		}
		t.agents = append(t.agents, agent{id: id, capacity: capacity, online: online})
	}
	return teams, nil
}

func registerAssign(spec string) error {
	teams, err := parseAgents(spec)
	if err != nil {
		return err
	}
	return bloblang.RegisterFunctionV2("assign_agent",
		bloblang.NewPluginSpec().
			Description("Round-robin within a team over PEER_AGENTS, skipping offline agents and those at capacity; null when none.").
			Param(bloblang.NewStringParam("team")),
		func(args *bloblang.ParsedParams) (bloblang.Function, error) {
			name, err := args.GetString("team")
			if err != nil {
				return nil, err
			}
			return func() (any, error) {
				t := teams[name]
				if t == nil || len(t.agents) == 0 {
					return nil, nil
				}
				t.mu.Lock()
				defer t.mu.Unlock()
				n := len(t.agents)
				start := ((t.next % n) + n) % n
				for i := 0; i < n; i++ {
					a := t.agents[(start+i)%n]
					if a.online && a.load < a.capacity {
						t.next = (start+i)%n + 1
						return a.id, nil
					}
				}
				return nil, nil
			}, nil
		})
}
