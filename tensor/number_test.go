package tensor

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
)

// checkShortDecimal fails t when parseShortDecimal reads s and strconv
// reads it otherwise, as float64 or as float32.
func checkShortDecimal(t testing.TB, s string) (ok bool) {
	t.Helper()
	f, ok := parseShortDecimal([]byte(s))
	if !ok {
		return false
	}
	want64, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatalf("parseShortDecimal(%q) = %v, but strconv refuses it: %v", s, f, err)
	}
	if math.Float64bits(f) != math.Float64bits(want64) {
		t.Fatalf("parseShortDecimal(%q) = %v (%#x), strconv %v (%#x)", s, f, math.Float64bits(f), want64, math.Float64bits(want64))
	}
	want32, _ := strconv.ParseFloat(s, 32)
	if got := float32(f); math.Float32bits(got) != math.Float32bits(float32(want32)) {
		t.Fatalf("float32 of parseShortDecimal(%q) = %v (%#x), strconv %v (%#x)", s, got, math.Float32bits(got), float32(want32), math.Float32bits(float32(want32)))
	}
	return true
}

func TestParseShortDecimal(t *testing.T) {
	tests := []struct {
		s    string
		fast bool // read here, not left to strconv
	}{
		{"0", true}, {"-0", true}, {"0.0", true}, {"-0.0", true}, {"1", true}, {"-1", true},
		{"42", true}, {"0.5", true}, {"0.12345678", true}, {"-0.4853516", true},
		{"1e22", true}, {"1E-22", true}, {"1.5e+3", true}, {"-2.5E-7", true}, {"123456.789e-3", true},
		{"9007199254740991", true},  // 2^53 - 1
		{"9007199254740992", false}, // 2^53: its neighbours round
		{"9007199254740993", false}, // strconv rounds it
		{"0.1234567890123456789", false},
		{"1e23", false}, {"1e-23", false}, {"0.0000000000000000000001", true}, {"0.00000000000000000000001", false},
		{"1e99999999999", false},
		{"3.4028235e38", false}, // float32's largest: 35 digits of exponent
		// Not JSON numbers: strconv (or the JSON reader before it) decides.
		{"", false}, {"-", false}, {".5", false}, {"5.", false}, {"1e", false}, {"1e+", false},
		{"0x10", false}, {"1_000", false}, {"Inf", false}, {"NaN", false}, {"+1", false}, {"1.2.3", false}, {"12a", false},
	}
	for _, tt := range tests {
		if got := checkShortDecimal(t, tt.s); got != tt.fast {
			t.Errorf("parseShortDecimal(%q) took it = %v, want %v", tt.s, got, tt.fast)
		}
	}
}

// TestParseShortDecimalAgreesWithStrconv: numbers as clients write them,
// from float32 and float64 values in every format strconv offers, and
// decimals of every length, read alike by both.
func TestParseShortDecimalAgreesWithStrconv(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	fast := 0
	const n = 200_000
	for range n {
		var s string
		switch rng.IntN(4) {
		case 0:
			v := rng.NormFloat64() * math.Pow(10, float64(rng.IntN(20)-10))
			s = strconv.FormatFloat(v, "efg"[rng.IntN(3)], rng.IntN(18)-1, 32)
		case 1:
			v := rng.NormFloat64() * math.Pow(10, float64(rng.IntN(40)-20))
			s = strconv.FormatFloat(v, "efg"[rng.IntN(3)], rng.IntN(18)-1, 64)
		case 2:
			s = fmt.Sprintf("%d.%0*de%d", rng.Int64N(1e8), rng.IntN(9)+1, rng.Int64N(1e8), rng.IntN(60)-30)
		default:
			s = strconv.FormatUint(rng.Uint64()>>rng.IntN(64), 10)
		}
		if checkShortDecimal(t, s) {
			fast++
		}
	}
	// Most of them are short enough: the fast path is taken.
	if fast < n/2 {
		t.Errorf("parseShortDecimal read %d of %d numbers, want most", fast, n)
	}
}

func FuzzParseShortDecimal(f *testing.F) {
	for _, s := range []string{"0", "-0.5", "1e22", "0.12345678", "9007199254740991", "1.5E-7", "12e", "-"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkShortDecimal(t, s) })
}

// decodeData reads an array's short decimals as it scans for where each
// ends: every element, in any layout of whitespace and nesting, reads as
// strconv reads it, whether it took the fast path or not.
func TestDecodeDataAgreesWithStrconv(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	seps := []string{",", ", ", " ,\n", "\t,\r\n"}
	for _, dt := range []Datatype{FP32, FP64} {
		for round := range 200 {
			n := 1 + rng.IntN(64)
			var nums []string
			raw := []byte("[")
			for i := range n {
				var s string
				switch rng.IntN(3) {
				case 0:
					s = strconv.FormatFloat(rng.NormFloat64()*math.Pow(10, float64(rng.IntN(10)-5)), "efg"[rng.IntN(3)], rng.IntN(12)-1, 32)
				case 1:
					s = strconv.FormatFloat(rng.NormFloat64(), 'g', -1, 64) // 17 digits: strconv's
				default:
					s = strconv.Itoa(rng.IntN(2000) - 1000)
				}
				nums = append(nums, s)
				if i > 0 {
					raw = append(raw, seps[rng.IntN(len(seps))]...)
				}
				if round%2 == 1 {
					s = "[" + s + "]" // nested, as a shape [n,1] writes it
				}
				raw = append(raw, s...)
			}
			raw = append(raw, ']')
			out, err := decodeData(raw, dt, int64(n), Limits{MaxDepth: 8})
			if err != nil {
				t.Fatalf("%s %s: %v", dt, raw, err)
			}
			for i, s := range nums {
				if dt == FP32 {
					want, _ := strconv.ParseFloat(s, 32)
					if got := math.Float32frombits(binary.LittleEndian.Uint32(out[4*i:])); math.Float32bits(got) != math.Float32bits(float32(want)) {
						t.Fatalf("FP32 element %d %q = %v, strconv %v", i, s, got, float32(want))
					}
					continue
				}
				want, _ := strconv.ParseFloat(s, 64)
				if got := math.Float64frombits(binary.LittleEndian.Uint64(out[8*i:])); math.Float64bits(got) != math.Float64bits(want) {
					t.Fatalf("FP64 element %d %q = %v, strconv %v", i, s, got, want)
				}
			}
		}
	}
}
