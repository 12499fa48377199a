from qatstudy.export import export_onnx, onnx_top1
from qatstudy.io import write_json
from qatstudy.job_runner import job_provenance, job_threads, run


def main(snakemake, log):
    p = snakemake.params.calibration
    report = export_onnx(
        snakemake.input.checkpoint,
        snakemake.output.onnx,
        snakemake.output.trt_onnx,
        data=snakemake.input.data,
        calib_images=p["images"],
        calib_method=p["method"],
    )
    threads = job_threads(snakemake)
    report["onnx_top1"] = onnx_top1(snakemake.output.onnx, snakemake.input.data, threads=threads)
    report["trt_onnx_top1"] = onnx_top1(snakemake.output.trt_onnx, snakemake.input.data, threads=threads)
    report["provenance"] = job_provenance(snakemake)
    write_json(snakemake.output.report, report)
    log(str(report))


run(snakemake, main)
