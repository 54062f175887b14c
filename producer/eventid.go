package producer

import (
	"crypto/aes"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
)

// A result stream's event id is its result's position in the results
// stream, which every model shares: as a plain number, the gaps between a
// tenant's ids would tell it the other models' volume. The id is instead
// the position and the model, as one AES block under the deployment's
// event key (jobs.Queue.EventKey), in base64url: it reveals nothing, and
// an id of another model's stream, or a made-up one, reads as no id of
// this stream.

// eventID is the id of the event at position seq of model's results.
func eventID(key []byte, model string, seq uint64) string {
	var block [aes.BlockSize]byte
	binary.BigEndian.PutUint64(block[:8], seq)
	tag := modelTag(model)
	copy(block[8:], tag[:])
	c, err := aes.NewCipher(key)
	if err != nil {
		panic("event key: " + err.Error()) // the key is always 16 bytes
	}
	c.Encrypt(block[:], block[:])
	return base64.RawURLEncoding.EncodeToString(block[:])
}

// parseEventID is the position an id of model's results names; false
// for anything else.
func parseEventID(key []byte, model, id string) (uint64, bool) {
	b, err := base64.RawURLEncoding.DecodeString(id)
	if err != nil || len(b) != aes.BlockSize {
		return 0, false
	}
	c, err := aes.NewCipher(key)
	if err != nil {
		return 0, false
	}
	c.Decrypt(b, b)
	tag := modelTag(model)
	if subtle.ConstantTimeCompare(b[8:], tag[:]) != 1 {
		return 0, false
	}
	return binary.BigEndian.Uint64(b[:8]), true
}

func modelTag(model string) [8]byte {
	sum := sha256.Sum256([]byte("inferq result stream " + model))
	return [8]byte(sum[:8])
}
