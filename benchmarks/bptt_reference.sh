# Sourced by reference_compare_mtt_bptt.sh and reference_timing.sh: how the BPTT
# reference (RememberThePast-DatasetDistillation srcs/main.py, run from its folder) is
# invoked at the side-by-side settings, in one place.

# bptt_reference_config REF_DIR REF_DATA ITERS NAME: the reference's config with ITERS
# image updates, no evaluation and the offline data root, as REF_DIR/configs/NAME.yml
bptt_reference_config() {
    sed -e "s/n_iters: 500000/n_iters: $3/" -e 's/num_eval: 10/num_eval: 0/' \
        -e "s#data_path: 'data'#data_path: $2#" \
        "$1/configs/compressors_bptt_interventions.yml" > "$1/configs/$4.yml"
}

# bptt_reference_args NOTE CONFIG IPC: sets BPTT_REF_ARGS, the arguments after the script:
# ConvNet, 150 inner steps, inner SGD momentum 0.9, one task of all 10 classes, the whole
# set per inner step, no ZCA, no augmentation, no validation split
bptt_reference_args() {
    BPTT_REF_ARGS=(--note "$1" --backbone_name ConvNet --config "$2.yml" --ipc "$3"
                   --bptt_inner_steps 150 --inner_optimizer SGD --inner_momentum 0.9
                   --dataset FashionMNIST --task_sampler_nc 10 --compressor_minibatch_size 10
                   --compressor imgs_embedding_minibatch --downsample_scale 1 --zca 0
                   --interventions none --validation_ratio 0)
}
