// The OCR peer the tests and benchmarks measure inferq against:
// @gutenye/ocr-node (PaddleOCR's PP-OCRv4 models in Node: sharp,
// OpenCV.js, onnxruntime-node), installed by `make ocrpeer` into
// build/peers/ocr-node, beside which this script is copied. It reads the
// pictures named on its command line one after another and prints a JSON
// line per picture ({file, lines, ms}), then {"images_per_s"} over them all.
import Ocr from '@gutenye/ocr-node'

const ocr = await Ocr.create()
const files = process.argv.slice(2)
const start = performance.now()
for (const file of files) {
  const t = performance.now()
  const lines = await ocr.detect(file)
  console.log(JSON.stringify({ file, lines: lines.map((l) => l.text), ms: performance.now() - t }))
}
console.log(JSON.stringify({ images_per_s: files.length / ((performance.now() - start) / 1000) }))
