package membership

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/hashicorp/memberlist"
)

// ErrNoEncryption is returned by keyring operations on a node whose gossip
// is not encrypted.
var ErrNoEncryption = errors.New("gossip encryption is not enabled on this node (--encrypt)")

// loadKeyring returns the gossip keyring: the one persisted in file by an
// earlier start or rotation (it wins over key, as rotations outlive the
// flag), else one holding key and persisted to file. It returns nil when
// there is neither: gossip is then plaintext.
func loadKeyring(file string, key []byte, logInfo func(msg string, args ...any)) (*memberlist.Keyring, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		switch {
		case err == nil:
			keys, err := decodeKeyringFile(b)
			if err != nil {
				return nil, fmt.Errorf("keyring file %s: %w", file, err)
			}
			if len(key) > 0 && !containsKey(keys, key) {
				logInfo("the gossip key given at start is not in the persisted keyring; using the keyring (rotate keys with mcpcluster keyring)", "file", file)
			}
			kr, err := memberlist.NewKeyring(keys, keys[0])
			if err != nil {
				return nil, fmt.Errorf("keyring file %s: %w", file, err)
			}
			return kr, nil
		case !errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("read keyring file: %w", err)
		}
	}
	if len(key) == 0 {
		return nil, nil
	}
	kr, err := memberlist.NewKeyring(nil, key)
	if err != nil {
		return nil, fmt.Errorf("gossip key: %w", err)
	}
	if file != "" {
		if err := writeKeyringFile(file, kr); err != nil {
			return nil, err
		}
	}
	return kr, nil
}

func containsKey(keys [][]byte, key []byte) bool {
	for _, k := range keys {
		if bytes.Equal(k, key) {
			return true
		}
	}
	return false
}

// decodeKeyringFile parses a JSON array of base64 keys, primary first.
func decodeKeyringFile(b []byte) ([][]byte, error) {
	var enc []string
	if err := json.Unmarshal(b, &enc); err != nil {
		return nil, fmt.Errorf("want a JSON array of base64 keys: %w", err)
	}
	if len(enc) == 0 {
		return nil, errors.New("no keys")
	}
	keys := make([][]byte, len(enc))
	for i, e := range enc {
		k, err := base64.StdEncoding.DecodeString(e)
		if err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		if err := memberlist.ValidateKey(k); err != nil {
			return nil, fmt.Errorf("key %d: %w", i, err)
		}
		keys[i] = k
	}
	return keys, nil
}

// writeKeyringFile persists kr atomically (mode 0600), primary key first.
func writeKeyringFile(file string, kr *memberlist.Keyring) error {
	primary := kr.GetPrimaryKey()
	enc := []string{base64.StdEncoding.EncodeToString(primary)}
	for _, k := range kr.GetKeys() {
		if !bytes.Equal(k, primary) {
			enc = append(enc, base64.StdEncoding.EncodeToString(k))
		}
	}
	b, err := json.Marshal(enc)
	if err != nil {
		return fmt.Errorf("encode keyring: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), ".keyring-*")
	if err != nil {
		return fmt.Errorf("write keyring file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("write keyring file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("write keyring file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write keyring file: %w", err)
	}
	if err := os.Rename(tmp.Name(), file); err != nil {
		return fmt.Errorf("write keyring file: %w", err)
	}
	return nil
}

// Encrypted reports whether gossip is encrypted.
func (m *Membership) Encrypted() bool {
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	return m.keyring != nil
}

// KeyringOp is a gossip keyring operation.
type KeyringOp string

// Keyring operations.
const (
	KeyringList    KeyringOp = "list"
	KeyringInstall KeyringOp = "install"
	KeyringUse     KeyringOp = "use"
	KeyringRemove  KeyringOp = "remove"
)

// ParseKeyringOp checks an operation name.
func ParseKeyringOp(s string) (KeyringOp, error) {
	switch op := KeyringOp(s); op {
	case KeyringList, KeyringInstall, KeyringUse, KeyringRemove:
		return op, nil
	}
	return "", fmt.Errorf("unknown keyring operation %q (want list, install, use or remove)", s)
}

// Keyring runs op with key (ignored for list) on this node's gossip
// keyring, persists the result, and returns the primary key and every
// installed key afterwards.
func (m *Membership) Keyring(op KeyringOp, key []byte) (primary []byte, keys [][]byte, err error) {
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	kr := m.keyring
	if kr == nil {
		return nil, nil, ErrNoEncryption
	}
	if op != KeyringList {
		if err := memberlist.ValidateKey(key); err != nil {
			return nil, nil, fmt.Errorf("keyring %s: %w", op, err)
		}
	}
	switch op {
	case KeyringList:
	case KeyringInstall:
		err = kr.AddKey(key)
	case KeyringUse:
		err = kr.UseKey(key)
	case KeyringRemove:
		if !containsKey(kr.GetKeys(), key) {
			err = errors.New("the key is not installed")
		} else {
			err = kr.RemoveKey(key)
		}
	default:
		err = fmt.Errorf("unknown keyring operation %q", op)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("keyring %s: %w", op, err)
	}
	if op != KeyringList && m.cfg.KeyringFile != "" {
		if err := writeKeyringFile(m.cfg.KeyringFile, kr); err != nil {
			return nil, nil, err
		}
		m.logger.Info("gossip keyring changed", "op", string(op), "keys", len(kr.GetKeys()))
	}
	return kr.GetPrimaryKey(), kr.GetKeys(), nil
}
